"""Helpers shared by the model tests: tiny configs and parameters drawn with numpy."""
import functools

import jax
import numpy as np

import dss_jax
from dss_jax.model import abstract_params


def tiny_config(name="t5_1_1_tiny", **overrides):
    return dss_jax.get_config(name, dropout_rate=0.0, **overrides)


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
