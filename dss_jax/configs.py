"""T5 model configurations: the `T5Config` dataclass and the named, published sizes.

`get_config("t5_1_1_base", dtype="bfloat16")` returns a named config with overrides.
`python -m dss_jax.configs [--json]` lists every named config with its parameter count,
computed with `jax.eval_shape` (nothing is allocated).

Two published styles are covered:
- T5 1.1 (Raffel et al. follow-up, `google/t5-v1_1-*`): gated-GELU MLP, output layer
  separate from the embedding, no logit scaling.
- T5 1.0 (`t5-small` ... `t5-11b`): ReLU MLP, output layer tied to the embedding and
  decoder output scaled by d_model**-0.5 before it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

MLP_ACTIVATIONS = ("gated-gelu", "relu")
REMAT_POLICIES = ("none", "full", "minimal")
ACTIVATION_DTYPES = ("float32", "bfloat16")
AUTO = "auto"
# How the model runs, not what it computes (every value gives the same function up to
# rounding): `dss_jax.hardware.resolve` turns "auto" into a value for the machine, once,
# in the entrypoint. The model refuses "auto".
MATMULS = (AUTO, "xla", "cpu", "cpu_fp32")
DECODE_KERNELS = (AUTO, "stored", "prepared")
HARDWARE_FIELDS = ("matmul", "mlp_gate_dtype", "decode_cache_dtype", "decode_kernels")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder-decoder (names follow Hugging Face where they exist).

    Frozen and hashable so that it can key compiled-function caches.
    """

    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    mlp_activation: str = "gated-gelu"  # "gated-gelu" (T5 1.1) or "relu" (T5 1.0)
    tie_word_embeddings: bool = False  # output layer = embedding transposed
    scale_decoder_outputs: bool = False  # multiply decoder output by d_model**-0.5
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.1
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"
    # The output layer multiplies float32 operands (T5X's choice) or, when False, operands
    # in `dtype` with float32 accumulation (as torch autocast and MaxText's default do).
    # The logits are float32 either way.
    logits_dot_in_fp32: bool = True
    remat_policy: str = "none"  # none | full | minimal
    scan_layers: bool = False
    # Hardware choices (HARDWARE_FIELDS; docs/model.md has the table). "auto" = decided by
    # `dss_jax.hardware.resolve(config)` for the machine the entrypoint runs on.
    # matmul: "xla" (plain einsum, every backend), "cpu" (`dss_jax.cpu_matmul`'s programs for
    # float32 and bfloat16 products: one CPU device with bf16 matrix units), "cpu_fp32"
    # (those programs for float32 products only).
    matmul: str = AUTO
    mlp_gate_dtype: str = AUTO  # dtype of the gated MLP's gelu(x W0) * (x W1)
    decode_cache_dtype: str = AUTO  # dtype of the incremental-decoding key/value caches
    # decode_kernels: "stored" (decoding multiplies the kernels as stored) or "prepared"
    # (`dss_jax.decoding.prepare_decode_weights` casts them once and the decoder's per-step
    # kernels are [out, in] copies).
    decode_kernels: str = AUTO

    def __post_init__(self):
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_activation must be one of {MLP_ACTIVATIONS}, got {self.mlp_activation!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        # Accept numpy/jax dtypes too, but store the canonical name (hashable, JSON-friendly).
        for field in ("dtype", "param_dtype"):
            name = _dtype_name(getattr(self, field))
            if name not in ACTIVATION_DTYPES:
                raise ValueError(f"{field} must be one of {ACTIVATION_DTYPES}, got {name!r}")
            object.__setattr__(self, field, name)
        for field in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
                      "num_decoder_layers", "relative_attention_num_buckets",
                      "relative_attention_max_distance"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)!r}")
        for field in ("mlp_gate_dtype", "decode_cache_dtype"):
            object.__setattr__(self, field, _dtype_name(getattr(self, field)))
        for field, allowed in (("matmul", MATMULS), ("decode_kernels", DECODE_KERNELS),
                               ("mlp_gate_dtype", (AUTO,) + ACTIVATION_DTYPES),
                               ("decode_cache_dtype", (AUTO,) + ACTIVATION_DTYPES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if not isinstance(self.logits_dot_in_fp32, bool):
            raise ValueError(f"logits_dot_in_fp32 must be a bool, got {self.logits_dot_in_fp32!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")

    @property
    def is_gated(self) -> bool:
        return self.mlp_activation.startswith("gated-")

    @property
    def logits_operand_dtype(self) -> str:
        """The dtype the output layer multiplies in (its result is always float32)."""
        return "float32" if self.logits_dot_in_fp32 else self.dtype

    @property
    def unresolved_hardware_fields(self) -> tuple[str, ...]:
        """The hardware choices still "auto" (`dss_jax.hardware.resolve` fills them)."""
        return tuple(field for field in HARDWARE_FIELDS if getattr(self, field) == AUTO)

    @property
    def inner_dim(self) -> int:
        """num_heads * d_kv: the width of the joined query/key/value projections."""
        return self.num_heads * self.d_kv

    def replace(self, **overrides: Any) -> "T5Config":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype
    import numpy as np  # local: keeps `import dss_jax.configs` free of heavy imports

    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(getattr(dtype, "__name__", dtype))


def _t5_1_1(d_model, num_heads, d_kv, d_ff, num_layers, vocab_size=32128) -> T5Config:
    return T5Config(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                    num_encoder_layers=num_layers, num_decoder_layers=num_layers,
                    mlp_activation="gated-gelu", tie_word_embeddings=False, scale_decoder_outputs=False)


def _t5_1_0(d_model, num_heads, d_kv, d_ff, num_layers, vocab_size=32128) -> T5Config:
    return T5Config(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                    num_encoder_layers=num_layers, num_decoder_layers=num_layers,
                    mlp_activation="relu", tie_word_embeddings=True, scale_decoder_outputs=True)


# Published dimensions (T5 paper Table 14 / the google/t5-v1_1-* and t5-* config.json files).
_NAMED_CONFIGS: dict[str, T5Config] = {
    "t5_1_1_tiny": _t5_1_1(d_model=32, num_heads=4, d_kv=8, d_ff=64, num_layers=2, vocab_size=128),
    "t5_1_1_small": _t5_1_1(d_model=512, num_heads=6, d_kv=64, d_ff=1024, num_layers=8),
    "t5_1_1_base": _t5_1_1(d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_layers=12),
    "t5_1_1_large": _t5_1_1(d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_layers=24),
    "t5_1_1_xl": _t5_1_1(d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_layers=24),
    "t5_1_1_xxl": _t5_1_1(d_model=4096, num_heads=64, d_kv=64, d_ff=10240, num_layers=24),
    "t5_1_0_tiny": _t5_1_0(d_model=32, num_heads=4, d_kv=8, d_ff=64, num_layers=2, vocab_size=128),
    "t5_1_0_small": _t5_1_0(d_model=512, num_heads=8, d_kv=64, d_ff=2048, num_layers=6),
    "t5_1_0_base": _t5_1_0(d_model=768, num_heads=12, d_kv=64, d_ff=3072, num_layers=12),
    "t5_1_0_large": _t5_1_0(d_model=1024, num_heads=16, d_kv=64, d_ff=4096, num_layers=24),
    "t5_1_0_3b": _t5_1_0(d_model=1024, num_heads=32, d_kv=128, d_ff=16384, num_layers=24),
    "t5_1_0_11b": _t5_1_0(d_model=1024, num_heads=128, d_kv=128, d_ff=65536, num_layers=24),
}

# Parameter counts as published (for the size table and its test).
PUBLISHED_PARAM_COUNTS = {
    "t5_1_1_small": 77e6, "t5_1_1_base": 248e6, "t5_1_1_large": 783e6,
    "t5_1_1_xl": 2.85e9, "t5_1_1_xxl": 11.1e9,
    "t5_1_0_small": 60.5e6, "t5_1_0_base": 223e6, "t5_1_0_large": 738e6,
    "t5_1_0_3b": 2.85e9, "t5_1_0_11b": 11.3e9,
}


def list_configs() -> list[str]:
    """Names accepted by `get_config`, in table order."""
    return list(_NAMED_CONFIGS)


def get_config(name: str, **overrides: Any) -> T5Config:
    """The named config with `overrides` applied (e.g. dtype="bfloat16", scan_layers=True)."""
    if name not in _NAMED_CONFIGS:
        raise KeyError(f"unknown T5 config {name!r}; known: {', '.join(_NAMED_CONFIGS)}")
    return _NAMED_CONFIGS[name].replace(**overrides)


def count_params(config: T5Config) -> int:
    """Number of parameters of `T5(config)`, from abstract shapes only (no allocation)."""
    import jax
    import numpy as np

    from dss_jax.model import abstract_params

    # Scanning gives the same parameters and traces much faster for deep models.
    shapes = abstract_params(config.replace(scan_layers=True, remat_policy="none"))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes)))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dss_jax.configs",
                                     description="List the named T5 configs with parameter counts.")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    rows = []
    for name in list_configs():
        config = get_config(name)
        rows.append({"name": name, "params": count_params(config),
                     "published_params": PUBLISHED_PARAM_COUNTS.get(name), **config.to_dict()})
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    header = f"{'name':<14} {'params':>15} {'d_model':>7} {'heads':>5} {'d_kv':>4} {'d_ff':>6} {'layers':>6}  mlp"
    print(header)
    for r in rows:
        print(f"{r['name']:<14} {r['params']:>15,} {r['d_model']:>7} {r['num_heads']:>5} {r['d_kv']:>4} "
              f"{r['d_ff']:>6} {str(r['num_encoder_layers']) + '+' + str(r['num_decoder_layers']):>6}  "
              f"{r['mlp_activation']}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
