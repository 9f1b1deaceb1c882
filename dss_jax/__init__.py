"""dss_jax: distilling step-by-step on JAX/Flax (T5 students, SeqIO tasks, T5X-style trainer).

The model API is exported here and loaded on first use, so `import dss_jax` stays light:
it never imports TensorFlow, SeqIO or PyTorch (and `python -m dss_jax.configs` runs
without a double import).
"""
import importlib

_EXPORTS = {
    "T5": "dss_jax.model",
    "T5Config": "dss_jax.configs",
    "get_config": "dss_jax.configs",
    "list_configs": "dss_jax.configs",
    "greedy_decode": "dss_jax.decoding",
    "load_hf_checkpoint": "dss_jax.hf_checkpoint",
    "export_hf_checkpoint": "dss_jax.hf_checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dss_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
