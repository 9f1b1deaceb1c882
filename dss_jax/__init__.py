"""dss_jax: distilling step-by-step on JAX/Flax (T5 students, SeqIO tasks, T5X-style trainer).

Importing the package is light: it pulls in JAX, Flax and numpy for the model, never
TensorFlow, SeqIO or PyTorch (safetensors is imported only when a checkpoint is read or
written).
"""
from dss_jax.configs import T5Config, get_config, list_configs
from dss_jax.decoding import greedy_decode
from dss_jax.hf_checkpoint import export_hf_checkpoint, load_hf_checkpoint
from dss_jax.model import T5

__all__ = ["T5", "T5Config", "get_config", "list_configs", "greedy_decode", "load_hf_checkpoint",
           "export_hf_checkpoint"]
