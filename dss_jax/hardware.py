"""The one seam between the machine and the model: `resolve(config)` fills the config's
hardware choices ("auto") for the machine the entrypoint runs on.

The model never looks at the process (backend, device count, processor flags): it runs
the program its `T5Config` names, and refuses a config whose hardware choices are still
"auto". An entrypoint resolves once, before it builds the model:

    config = hardware.resolve(config)                # this process's backend and devices
    config = hardware.resolve(config, backend="tpu", num_devices=256)   # a planned machine

Explicit values are kept, so a recorded config with "auto" resumes on any machine and a
config with explicit values compiles the same program everywhere. The choices
(`configs.HARDWARE_FIELDS`; timings behind them in docs/speed.md):

| field | one CPU device | several CPU devices | accelerators |
|---|---|---|---|
| `matmul` | "cpu" with bf16 matrix units (AMX / AVX512-BF16), else "cpu_fp32" | "xla" | "xla" |
| `mlp_gate_dtype` | "float32" | "float32" | `config.dtype` (T5X's) |
| `decode_cache_dtype` | "float32" | "float32" | `config.dtype` |
| `decode_kernels` | "prepared" | "prepared" | "stored" |

On several devices `dss_jax.cpu_matmul`'s programs would cost collectives (they flatten
their operands), so the multi-device CPU meshes of the tests run the accelerators' matmuls.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib

from dss_jax.configs import T5Config

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_bf16_matrix_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the processor reports AMX-BF16 or AVX512-BF16 (read once from `cpuinfo`)."""
    try:
        text = pathlib.Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the hardware choices depend on."""

    backend: str  # "cpu", "gpu", "tpu", ...
    num_devices: int
    bf16_matrix_units: bool = False  # CPU only: AMX-BF16 or AVX512-BF16


def this_machine(backend: str | None = None, num_devices: int | None = None,
                 bf16_matrix_units: bool | None = None) -> Machine:
    """The `Machine` of this process, with any of its fields given instead of read."""
    import jax

    backend = jax.default_backend() if backend is None else backend
    num_devices = jax.device_count() if num_devices is None else int(num_devices)
    if bf16_matrix_units is None:
        bf16_matrix_units = backend == "cpu" and cpu_has_bf16_matrix_units()
    return Machine(backend, num_devices, bool(bf16_matrix_units))


def choices(config: T5Config, machine: Machine) -> dict[str, str]:
    """The value of every hardware field for `machine` (pure: the table in the module doc)."""
    cpu = machine.backend == "cpu"
    if cpu and machine.num_devices == 1:
        matmul = "cpu" if machine.bf16_matrix_units else "cpu_fp32"
    else:
        matmul = "xla"
    return {
        "matmul": matmul,
        "mlp_gate_dtype": "float32" if cpu else config.dtype,
        "decode_cache_dtype": "float32" if cpu else config.dtype,
        "decode_kernels": "prepared" if cpu else "stored",
    }


def resolve(config: T5Config, backend: str | None = None, *, num_devices: int | None = None,
            bf16_matrix_units: bool | None = None) -> T5Config:
    """`config` with every "auto" hardware field set for the machine (this process's
    backend, device count and processor flags, unless given); explicit values are kept."""
    if not config.unresolved_hardware_fields:
        return config
    return _fill(config, this_machine(backend, num_devices, bf16_matrix_units))


def portable(config: T5Config) -> T5Config:
    """`config` with every "auto" hardware field set to the accelerators' choice, which
    runs on any backend (the model creates its parameters with it: they do not depend on
    the hardware choices)."""
    return _fill(config, Machine(backend="accelerator", num_devices=1))


def _fill(config: T5Config, machine: Machine) -> T5Config:
    picked = choices(config, machine)
    return config.replace(**{field: picked[field] for field in config.unresolved_hardware_fields})
