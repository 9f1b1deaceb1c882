"""The launch config: one YAML file that says what to train and where.

The same file drives the Cloud TPU launcher (section ``tpu``) and the SLURM script
generator (section ``slurm``); see ``launch/example.yaml``.  Loading is strict: an
unknown key, a missing required key or a value of the wrong type is a ``ConfigError``
that names the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Mapping

import yaml

TPU_NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
PROCESS_LAYOUTS = ("per_node", "per_gpu")


class ConfigError(ValueError):
    """The launch config is invalid; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class TpuConfig:
    """Where and how to run on a Cloud TPU VM slice."""

    project: str
    zone: str
    accelerator_type: str  # e.g. "v4-64", "v5p-128", "v5litepod-16"
    runtime_version: str  # e.g. "tpu-ubuntu2204-base"
    queued_resource: bool = False  # create through `queued-resources create` and wait for ACTIVE
    spot: bool = False
    # "wheel": build a wheel of this checkout and copy it to every worker; a path ending
    # in .whl: copy that wheel; anything else: a pip requirement installed on every worker
    # (e.g. "git+https://github.com/you/dss_jax@main").
    install: str = "wheel"
    pip_extra: tuple[str, ...] = ("jax[tpu]>=0.10,<0.11",)
    # shell lines run on every worker after the install, in the home directory (e.g. fetch
    # the data: DSS_DATA_DIR must be a local folder on each worker)
    worker_setup: tuple[str, ...] = ()
    wait_timeout_s: int = 3600  # how long `up` waits for a queued resource to become ACTIVE


@dataclasses.dataclass(frozen=True)
class SlurmConfig:
    """How to run on a multi-node GPU cluster with SLURM."""

    nodes: int
    gpus_per_node: int
    process_layout: str = "per_node"  # "per_node": one process sees all its node's GPUs; "per_gpu": one process per GPU
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # e.g. "24:00:00"
    cpus_per_task: int | None = None
    coordinator_port: int = 29500
    log_dir: str = "slurm_logs"
    setup: tuple[str, ...] = ()  # shell lines run before training, e.g. "source ~/venvs/dss/bin/activate"
    extra_sbatch: tuple[str, ...] = ()  # extra "#SBATCH" options, e.g. "--exclusive"


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """One training run: the experiment, plus the TPU and/or SLURM section."""

    name: str
    gin_file: str
    model_dir: str
    gin_bindings: tuple[str, ...] = ()  # "NAME=VALUE" in gin syntax, passed as --gin.NAME=VALUE
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    python: str = "python3"
    train_module: str = "dss_jax.train"
    log_dir: str = "dss_logs"  # on each TPU worker, relative to the home directory
    tpu: TpuConfig | None = None
    slurm: SlurmConfig | None = None


def _check_keys(section: str, raw: Mapping[str, Any], cls: type) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ConfigError(f"{section}: missing required key(s) {missing}")


def _expect(section: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    # bool is an int in Python; do not let `nodes: true` pass as 1.
    if isinstance(value, bool) and kind is int:
        raise ConfigError(f"{section}.{key}: expected int, got bool {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{section}.{key}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _string_list(section: str, key: str, value: Any) -> tuple[str, ...]:
    _expect(section, key, value, list)
    for item in value:
        _expect(section, key, item, str)
    return tuple(value)


def _positive_int(section: str, key: str, value: Any) -> int:
    _expect(section, key, value, int)
    if value < 1:
        raise ConfigError(f"{section}.{key}: must be >= 1, got {value}")
    return value


def _parse_tpu(raw: Any) -> TpuConfig:
    _expect("config", "tpu", raw, dict)
    _check_keys("tpu", raw, TpuConfig)
    values: dict[str, Any] = {}
    for key in ("project", "zone", "accelerator_type", "runtime_version", "install"):
        if key in raw:
            values[key] = _expect("tpu", key, raw[key], str)
    for key in ("queued_resource", "spot"):
        if key in raw:
            values[key] = _expect("tpu", key, raw[key], bool)
    for key in ("pip_extra", "worker_setup"):
        if key in raw:
            values[key] = _string_list("tpu", key, raw[key])
    if "wait_timeout_s" in raw:
        values["wait_timeout_s"] = _positive_int("tpu", "wait_timeout_s", raw["wait_timeout_s"])
    return TpuConfig(**values)


def _parse_slurm(raw: Any) -> SlurmConfig:
    _expect("config", "slurm", raw, dict)
    _check_keys("slurm", raw, SlurmConfig)
    values: dict[str, Any] = {}
    for key in ("nodes", "gpus_per_node", "coordinator_port"):
        if key in raw:
            values[key] = _positive_int("slurm", key, raw[key])
    if "cpus_per_task" in raw and raw["cpus_per_task"] is not None:
        values["cpus_per_task"] = _positive_int("slurm", "cpus_per_task", raw["cpus_per_task"])
    for key in ("partition", "account", "time"):
        if key in raw and raw[key] is not None:
            values[key] = _expect("slurm", key, raw[key], str)
    for key in ("process_layout", "log_dir"):
        if key in raw:
            values[key] = _expect("slurm", key, raw[key], str)
    for key in ("setup", "extra_sbatch"):
        if key in raw:
            values[key] = _string_list("slurm", key, raw[key])
    layout = values.get("process_layout", "per_node")
    if layout not in PROCESS_LAYOUTS:
        raise ConfigError(f"slurm.process_layout: expected one of {PROCESS_LAYOUTS}, got {layout!r}")
    return SlurmConfig(**values)


def parse_config(raw: Any) -> LaunchConfig:
    """Validate a parsed YAML/JSON mapping and build the ``LaunchConfig``."""
    _expect("config", "<top level>", raw, dict)
    _check_keys("config", raw, LaunchConfig)
    values: dict[str, Any] = {}
    for key in ("name", "gin_file", "model_dir", "python", "train_module", "log_dir"):
        if key in raw:
            values[key] = _expect("config", key, raw[key], str)
    if not TPU_NAME_PATTERN.match(values["name"]):
        raise ConfigError(
            f"config.name: {values['name']!r} must be lower-case letters, digits and '-', "
            "start with a letter and be at most 63 characters (Cloud TPU node names)"
        )
    if "gin_bindings" in raw:
        bindings = _string_list("config", "gin_bindings", raw["gin_bindings"])
        for binding in bindings:
            if "=" not in binding:
                raise ConfigError(f"config.gin_bindings: {binding!r} is not of the form NAME=VALUE")
        values["gin_bindings"] = bindings
    if "env" in raw:
        env = _expect("config", "env", raw["env"], dict)
        for key, value in env.items():
            if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ConfigError(f"config.env: {key!r} is not a valid environment variable name")
            _expect("config", f"env.{key}", value, str)
        values["env"] = dict(env)
    if raw.get("tpu") is not None:
        values["tpu"] = _parse_tpu(raw["tpu"])
    if raw.get("slurm") is not None:
        values["slurm"] = _parse_slurm(raw["slurm"])
    return LaunchConfig(**values)


def load_config(path: str | pathlib.Path) -> LaunchConfig:
    """Read and validate a launch config file (YAML; JSON is valid YAML too)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"launch config {path} not found")
    with path.open() as f:
        raw = yaml.safe_load(f)
    try:
        return parse_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
