"""Helpers shared by the model tests: tiny configs, the model's programs, parameters drawn with numpy."""
import functools

import jax
import numpy as np

import dss_jax
from dss_jax import hardware
from dss_jax.model import abstract_params

# The programs a config can resolve to, by the machine `hardware.resolve` is told about:
# the accelerators' (plain einsum, caches and gate in the activation dtype, kernels as
# stored) and one CPU device's, with and without bf16 matrix units. All run on this CPU.
PROGRAMS = {
    "accelerator": dict(backend="gpu", num_devices=1),
    "cpu": dict(backend="cpu", num_devices=1, bf16_matrix_units=True),
    "cpu_fp32": dict(backend="cpu", num_devices=1, bf16_matrix_units=False),
}


def program_config(config, program):
    """`config` resolved for the named entry of `PROGRAMS`."""
    return hardware.resolve(config, **PROGRAMS[program])


def tiny_config(name="t5_1_1_tiny", **overrides):
    """The named config without dropout, resolved for this process's machine (as an
    entrypoint would)."""
    return hardware.resolve(dss_jax.get_config(name, **{"dropout_rate": 0.0, **overrides}))


@functools.lru_cache(maxsize=None)
def random_params(name, seed=0, scale_noise=0.1):
    """Unscanned parameters of the named config, drawn with numpy (no XLA compile): unit
    normal embeddings, kernels with std fan_in**-0.5, layer-norm scales 1 + scale_noise * N(0, 1)."""
    rng = np.random.RandomState(seed)

    def draw(path, leaf):
        last = path[-1].key
        if last == "scale":
            return (1.0 + scale_noise * rng.standard_normal(leaf.shape)).astype(np.float32)
        std = 1.0 if last == "embedding" else leaf.shape[-2] ** -0.5
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(tiny_config(name)))
