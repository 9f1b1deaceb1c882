"""gin-config plumbing of the entrypoints (T5X style), kept at the edges of the program.

* ``--gin_file=NAME`` finds files by path, then in ``--gin_search_paths``, the working
  directory, the installed package ``dss_jax_gin`` (the repo's ``gin/`` folder) and,
  for a source checkout that was not reinstalled, the repo's ``gin/`` next to ``dss_jax``.
  ``gin/`` deliberately has no ``__init__.py``: run from the repo root, a regular package
  named ``gin`` would shadow gin-config itself (``import gin`` would import the folder).
* ``--gin.NAME=VALUE`` is shorthand for the binding ``NAME = VALUE`` (``--gin_bindings``
  also works), e.g. ``--gin.MODEL_DIR="'/tmp/run'"`` or ``--gin.Experiment.method="'standard_finetune'"``.
* The configurables here build plain values (a ``T5Config``, the frozen ``Experiment`` and
  its typed configs, ``RunConfig``) that are handed to pure functions; they are registered
  here, at the edge, so the library classes stay plain.
* ``check_configuration`` runs after parsing and before an entrypoint builds anything: a
  macro that is set but used by no setting (a misspelt ``--gin.TRAIN_STEPZ=5``), a macro
  that is used but never set, a required macro left unset (``MODEL_DIR``) and a literal of
  the wrong type for a dss_jax setting (``InputConfig.batch_size = '8'``) are each a
  ``ConfigError`` naming the setting and what it accepts.  gin's own errors (unknown
  configurable or parameter, syntax) become a ``ConfigError`` with close matches.
"""
from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import difflib
import importlib.util
import inspect
import logging
import os
import pathlib
import re
import sys
import types
import typing
from typing import Any, Mapping, Sequence

import gin

from dss_jax import configs, experiment, trainer

GIN_PACKAGE = "dss_jax_gin"


def default_search_paths() -> list[str]:
    """Where gin files are looked up by name, after any user paths."""
    paths = [os.getcwd()]
    try:  # the installed package (a plain folder of .gin files, no __init__.py: see below)
        spec = importlib.util.find_spec(GIN_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        paths.extend(str(p) for p in spec.submodule_search_locations)
    repo_gin = pathlib.Path(__file__).resolve().parent.parent / "gin"
    if repo_gin.is_dir():
        paths.append(str(repo_gin))
    return list(dict.fromkeys(paths))


def find_gin_file(name: str, search_paths: Sequence[str]) -> str:
    """Absolute path of a gin file given by path or by name relative to a search path."""
    candidates = [name] if os.path.isabs(name) else [name] + [os.path.join(p, name) for p in search_paths]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(f"gin file {name!r} not found (searched {', '.join(search_paths)})")


def rewrite_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``--gin.NAME=VALUE`` arguments off ``argv``: returns (other args, bindings)."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (by path or name); repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding; repeatable")
    parser.add_argument("--gin_search_paths", default="", help="comma-separated extra folders to find gin files in")


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str] = ()) -> list[str]:
    """Parse files and bindings (files first); returns the search paths used."""
    paths = [p for p in search_paths if p] + default_search_paths()
    for path in paths:
        gin.add_config_file_search_path(path)
    files = [find_gin_file(f, paths) for f in gin_files]
    try:
        with _quiet_search_misses():
            gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=False)
    except experiment.ConfigError:
        raise
    except Exception as err:  # gin raises ValueError, TypeError, SyntaxError, TokenError, ImportError, ...
        raise experiment.ConfigError(_explain_gin_error(err, gin_bindings)) from None
    return paths


def _unparsable_binding(bindings: Sequence[str]) -> str | None:
    """The first ``NAME = VALUE`` binding whose value gin cannot read as a literal (an unquoted string)."""
    for binding in bindings:
        name, _, value = binding.partition("=")
        try:
            gin.config.parse_value(value.strip())
        except SyntaxError:
            return f" --gin.{name.strip()}={value.strip()}: a string value needs quotes, e.g. " \
                   f"--gin.{name.strip()}=\"'{value.strip()}'\""
        except Exception:  # a reference (@X()) is checked when the config is parsed
            continue
    return None


def _explain_gin_error(err: Exception, bindings: Sequence[str] = ()) -> str:
    """gin's parse error with close matches for an unknown name and a hint for unquoted strings."""
    text = str(err).strip()
    unknown = re.search(r"No configurable matching '([^']+)'", text)
    param = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", text)
    hint = ""
    if unknown:
        names = sorted({c.name for _, c in gin.config._REGISTRY.items()})
        close = difflib.get_close_matches(unknown.group(1).split(".")[-1], names, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
    elif param:
        accepted = _parameters(param.group(1))
        close = difflib.get_close_matches(param.group(2), accepted, n=3)
        hint = (f" Did you mean {' or '.join(close)}?" if close else "") + (
            f" {param.group(1)} accepts: {', '.join(accepted)}." if accepted else "")
    elif isinstance(err, SyntaxError):
        hint = _unparsable_binding(bindings) or ""
    return f"invalid gin configuration: {type(err).__name__}: {text}" + (f"\n{hint.strip()}" if hint else "")


def _parameters(name: str) -> list[str]:
    """The parameters a configurable accepts (empty when unknown)."""
    try:
        configurable = gin.config._REGISTRY.get_match(name)
        fn = configurable.wrapped
        signature = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    except (ValueError, TypeError, AttributeError):
        return []
    return [p for p in signature.parameters if p not in ("self", "args", "kwargs")]


@contextlib.contextmanager
def _quiet_search_misses():
    """gin logs an ERROR for every search path an ``include`` is not in; a real miss still raises."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def parse_args_and_gin(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse command-line flags, then the gin files and bindings they name."""
    add_gin_flags(parser)
    rest, shorthand = rewrite_gin_args(argv)
    args = parser.parse_args(rest)
    search = [p for p in args.gin_search_paths.split(",") if p]
    parse_gin(args.gin_file, list(args.gin_bindings) + shorthand, search)
    return args


def parse_command_line(prog: str, doc: str | None, argv: Sequence[str] | None) -> argparse.Namespace:
    """What every entrypoint does first: flags, then gin, then quiet absl logging."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_args_and_gin(parser, sys.argv[1:] if argv is None else argv)
    logging.getLogger("absl").setLevel(logging.WARNING)
    return args


# ----------------------------------------------------------------------------- configurables


@gin.configurable
def model_config(name: str = gin.REQUIRED, overrides: Mapping[str, Any] | None = None, **kwargs) -> configs.T5Config:
    """A named ``T5Config`` with overrides, e.g. ``model_config.overrides = {'dropout_rate': 0.0}``.

    Unknown names and settings, and values of the wrong type, are a ``ConfigError``.
    """
    known = configs.list_configs()
    if name not in known:
        raise experiment.ConfigError(f"model_config.name = {name!r} is not valid: expected one of {', '.join(known)}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise experiment.ConfigError(f"model_config.overrides = {overrides!r} is not valid: expected a dict of "
                                     f"T5Config settings, e.g. {{'dropout_rate': 0.0}}")
    base = configs.get_config(name)
    fields = [f.name for f in dataclasses.fields(configs.T5Config)]
    settings = {**{f"model_config.overrides[{k!r}]": (k, v) for k, v in dict(overrides or {}).items()},
                **{f"model_config.{k}": (k, v) for k, v in kwargs.items()}}
    for setting, (key, value) in settings.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=3)
            raise experiment.ConfigError(f"{setting} is not a T5Config setting" +
                                         (f"; did you mean {' or '.join(close)}?" if close else
                                          f"; settings: {', '.join(fields)}"))
        current = getattr(base, key)
        if current is not None and not _same_kind(value, current):
            raise experiment.ConfigError(f"{setting} = {value!r} is not valid: expected a value of type "
                                         f"{type(current).__name__} (like {name}'s {current!r})")
    return base.replace(**dict(overrides or {}), **kwargs)


def _same_kind(value: Any, like: Any) -> bool:
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(like, float) or isinstance(value, int))
    if isinstance(like, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(like))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the ``train`` configurable hands the training entrypoint."""

    model_dir: str
    experiment: Any
    run: Any
    resume_may_change: tuple[str, ...]


@gin.configurable("train")
def train_settings(model_dir: str = gin.REQUIRED, experiment=gin.REQUIRED, run=None,
                   resume_may_change: Sequence[str] = ()) -> TrainSettings:
    """The ``train.*`` bindings of the run's gin files (``runs/finetune.gin``): the run directory,
    the ``Experiment``, the ``RunConfig`` and the settings allowed to change on resume.
    Registered here, at the edge, so the trainer, the plan and the sweep read the same objects."""
    from dss_jax.experiment import RunConfig  # (the parameter `experiment` shadows the module here)

    return TrainSettings(model_dir, experiment, run if run is not None else RunConfig(), tuple(resume_may_change))


optimizer_config = gin.external_configurable(trainer.OptimizerConfig, name="OptimizerConfig")
experiment_config = gin.external_configurable(experiment.Experiment, name="Experiment")
input_config = gin.external_configurable(experiment.InputConfig, name="InputConfig")
train_config = gin.external_configurable(experiment.TrainConfig, name="TrainConfig")
eval_config = gin.external_configurable(experiment.EvalConfig, name="EvalConfig")
checkpoint_config = gin.external_configurable(experiment.CheckpointConfig, name="CheckpointConfig")
mesh_config = gin.external_configurable(experiment.MeshConfig, name="MeshConfig")
run_config = gin.external_configurable(experiment.RunConfig, name="RunConfig")


# ----------------------------------------------------------------------------- checking a parsed configuration

_REQUIRED_SCOPE = ["gin.REQUIRED"]


def _macro_references(value: Any) -> list[str]:
    return ["/".join(ref.scopes) for ref in gin.config.iterate_references(value)
            if ref.configurable.selector == "gin.macro"]


def _is_required(value: Any) -> bool:
    return isinstance(value, gin.config.ConfigurableReference) and value.scopes == _REQUIRED_SCOPE


def check_configuration(unused_required: Sequence[str] = ()) -> None:
    """Raise ``ConfigError`` for a misspelt, missing or unset macro, or a literal of the wrong type.

    Call after parsing and before building anything: see the module docstring.
    ``unused_required``: required macros the entrypoint does not need (``plan`` compiles a
    run without a ``MODEL_DIR``).
    """
    bindings = dict(gin.config._CONFIG)  # {(scope, selector): {parameter: value}}; gin has no public listing
    macros = {scope: params.get("value") for (scope, selector), params in bindings.items() if selector == "gin.macro"}
    used_by: dict[str, str] = {}
    for (scope, selector), params in bindings.items():
        for parameter, value in params.items():
            for macro in _macro_references(value):
                used_by.setdefault(macro, scope if selector == "gin.macro" else f"{_short(selector)}.{parameter}")
    for macro, user in sorted(used_by.items()):
        if macro not in macros:
            raise experiment.ConfigError(f"gin macro {macro} is used by {user} but never set: set it with "
                                         f"--gin.{macro}=... or in a gin file")
        if _is_required(macros[macro]) and macro not in unused_required:
            raise experiment.ConfigError(f"{macro} is not set (it is required by {user}): pass "
                                         f"--gin.{macro}=\"'...'\"" + (" with the run directory, e.g. "
                                                                     "--gin.MODEL_DIR=\"'/tmp/run'\""
                                                                     if macro == "MODEL_DIR" else ""))
    for macro, value in sorted(macros.items()):
        if macro not in used_by and not _is_required(value):
            close = difflib.get_close_matches(macro, list(used_by), n=2)
            raise experiment.ConfigError(
                f"gin macro {macro} = {value!r} is set but no setting uses it (misspelt?)"
                + (f"; did you mean {' or '.join(close)}?" if close else "")
                + " Settings are bound by name, e.g. --gin.TrainConfig.steps=2000; macros in use: "
                + (", ".join(sorted(used_by)) or "none"))
    for (scope, selector), params in bindings.items():
        if selector != "gin.macro":
            _check_types(selector, params)


def _short(selector: str) -> str:
    return selector.rsplit(".", 1)[-1]


def _check_types(selector: str, params: Mapping[str, Any]) -> None:
    """Literal values bound to a dss_jax configurable must have the type its signature declares."""
    try:
        configurable = gin.config._REGISTRY.get_match(selector)
    except (ValueError, KeyError):
        return
    if configurable is None or not (configurable.module or "").startswith("dss_jax"):
        return
    fn = configurable.wrapped
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved is not checked
        return
    for parameter, value in params.items():
        hint = hints.get(parameter)
        if hint is None or list(gin.config.iterate_references(value)):
            continue
        if not _matches(value, hint):
            raise experiment.ConfigError(f"{configurable.name}.{parameter} = {value!r} is not valid: expected "
                                         f"{_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a literal gin value fits a type hint (unknown kinds of hint accept anything)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (tuple, list, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if base in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    if inspect.isclass(base) and dataclasses.is_dataclass(base):
        return isinstance(value, base)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a quoted string ('...')"}
    if hint in names:
        return names[hint]
    base = typing.get_origin(hint) or hint
    kinds = {tuple: "a tuple / list", list: "a list", collections.abc.Sequence: "a tuple / list", dict: "a dict",
             collections.abc.Mapping: "a dict"}
    return kinds.get(base, getattr(base, "__name__", str(hint)))


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one message, never a traceback."""
    from dss_jax import checkpoints, initial_params, run_dir
    from dss_jax.data import readers

    return (experiment.ConfigError, readers.DataValidationError, readers.BadRowError,
            run_dir.ExperimentMismatchError, run_dir.RunDirLockedError, FileNotFoundError,
            checkpoints.CheckpointRestoreError, checkpoints.CheckpointDamagedError,
            initial_params.InitialCheckpointError)


def run_entrypoint(prog: str, doc: str | None, argv: Sequence[str] | None, fn,
                   exit_codes: Mapping[type[BaseException], int] | None = None) -> int:
    """Parse flags and gin, call ``fn()``; a user error prints one message and returns 2.

    ``exit_codes`` maps further exception types to exit codes (their message is printed too).
    """
    codes = dict(exit_codes or {})
    try:
        parse_command_line(prog, doc, argv)
        check_configuration()
        fn()
    except tuple(codes) as err:
        print(f"{prog}: {error_message(err)}", file=sys.stderr, flush=True)
        return next(code for kind, code in codes.items() if isinstance(err, kind))
    except user_errors() as err:
        print(f"{prog}: error: {error_message(err)}", file=sys.stderr, flush=True)
        return 2
    return 0


def error_message(err: BaseException) -> str:
    """The error's text without the lines gin appends about the configurable it was raised in."""
    lines = [line for line in str(err).splitlines() if not line.strip().startswith("In call to configurable")]
    return "\n".join(lines).strip()
