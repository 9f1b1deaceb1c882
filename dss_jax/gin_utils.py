"""gin-config plumbing of the entrypoints (T5X style), kept at the edges of the program.

* ``--gin_file=NAME`` finds files by path, then in ``--gin_search_paths``, the working
  directory, the installed package ``dss_jax_gin`` (the repo's ``gin/`` folder) and,
  for a source checkout that was not reinstalled, the repo's ``gin/`` next to ``dss_jax``.
  ``gin/`` deliberately has no ``__init__.py``: run from the repo root, a regular package
  named ``gin`` would shadow gin-config itself (``import gin`` would import the folder).
* ``--gin.NAME=VALUE`` is shorthand for the binding ``NAME = VALUE`` (``--gin_bindings``
  also works), e.g. ``--gin.MODEL_DIR="'/tmp/run'"`` or ``--gin.TRAIN_MODE="'standard_finetune'"``.
* The configurables here build plain values (a ``T5Config``, the frozen ``Experiment`` and
  its typed configs, ``RunConfig``) that are handed to pure functions; they are registered
  here, at the edge, so the library classes stay plain.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import pathlib
import sys
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
    with _quiet_search_misses():
        gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=False)
    return paths


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
    """A named ``T5Config`` with overrides, e.g. ``model_config.overrides = {'dropout_rate': 0.0}``."""
    return configs.get_config(name, **dict(overrides or {}), **kwargs)


optimizer_config = gin.external_configurable(trainer.OptimizerConfig, name="OptimizerConfig")
experiment_config = gin.external_configurable(experiment.Experiment, name="Experiment")
input_config = gin.external_configurable(experiment.InputConfig, name="InputConfig")
train_config = gin.external_configurable(experiment.TrainConfig, name="TrainConfig")
eval_config = gin.external_configurable(experiment.EvalConfig, name="EvalConfig")
checkpoint_config = gin.external_configurable(experiment.CheckpointConfig, name="CheckpointConfig")
mesh_config = gin.external_configurable(experiment.MeshConfig, name="MeshConfig")
run_config = gin.external_configurable(experiment.RunConfig, name="RunConfig")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one message, never a traceback."""
    from dss_jax import run_dir

    return (experiment.ConfigError, run_dir.ExperimentMismatchError, run_dir.RunDirLockedError, FileNotFoundError)


def run_entrypoint(prog: str, doc: str | None, argv: Sequence[str] | None, fn,
                   exit_codes: Mapping[type[BaseException], int] | None = None) -> int:
    """Parse flags and gin, call ``fn()``; a user error prints one message and returns 2.

    ``exit_codes`` maps further exception types to exit codes (their message is printed too).
    """
    codes = dict(exit_codes or {})
    try:
        parse_command_line(prog, doc, argv)
        fn()
    except tuple(codes) as err:
        print(f"{prog}: {err}", file=sys.stderr, flush=True)
        return codes[type(err)] if type(err) in codes else next(c for t, c in codes.items() if isinstance(err, t))
    except user_errors() as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
