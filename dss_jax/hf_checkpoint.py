"""Hugging Face T5 checkpoints <-> dss_jax parameters.

`load_hf_checkpoint(path)` reads a directory as `save_pretrained` writes it (config.json
with model.safetensors or a sharded model.safetensors.index.json; else a Flax
flax_model.msgpack or sharded flax_model.msgpack.index.json, as the google/t5-v1_1-* hub
repos publish; else pytorch_model.bin, which needs torch) and returns `(T5Config, params)`.
A Flax checkpoint's tree is renamed to the PyTorch tensor names first, so there is one
conversion to our parameters. `export_hf_checkpoint(config, params, path)` writes
config.json + model.safetensors that `transformers.T5ForConditionalGeneration` loads.

Tying and scaling follow the checkpoint, not a library default:
- the output layer is untied when the file holds an `lm_head.weight` different from
  `shared.weight` (real T5 1.1 checkpoints), or when config.json says
  `"tie_word_embeddings": false` (then `lm_head.weight` must be present);
- decoder outputs are scaled by d_model**-0.5 when config.json says
  `"scale_decoder_outputs": true` (transformers 5), or, without that key, when
  `tie_word_embeddings` is absent or true (T5 1.0 configs omit both keys).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Iterator

import numpy as np

from dss_jax.configs import T5Config

logger = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
FLAX_NAME = "flax_model.msgpack"
FLAX_INDEX_NAME = "flax_model.msgpack.index.json"
PYTORCH_NAME = "pytorch_model.bin"
# Weight files in the order they are preferred.
WEIGHT_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, FLAX_NAME, FLAX_INDEX_NAME, PYTORCH_NAME)
# transformers' T5PreTrainedModel.base_model_prefix: a Flax state may be nested under it.
FLAX_BASE_MODEL_PREFIX = "transformer"
# Copies of shared.weight that transformers may or may not write.
EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the T5 layout its config describes."""


# ----------------------------------------------------------------------------- name map

def _attention_names(hf_prefix: str, path: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...], bool]]:
    for hf, ours in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
        yield f"{hf_prefix}.{hf}.weight", path + (ours, "kernel"), True


def _mlp_names(config: T5Config, hf_prefix: str, path: tuple[str, ...]):
    names = ("wi_0", "wi_1") if config.is_gated else ("wi",)
    for name in names + ("wo",):
        yield f"{hf_prefix}.{name}.weight", path + ("mlp", name, "kernel"), True


def parameter_name_map(config: T5Config) -> list[tuple[str, tuple[str, ...], bool]]:
    """(HF tensor name, our unscanned parameter path, transpose?) for every tensor."""
    rows = [("shared.weight", ("token_embedder", "embedding"), False)]
    if not config.tie_word_embeddings:
        rows.append(("lm_head.weight", ("decoder", "logits_dense", "kernel"), True))
    for stack in ("encoder", "decoder"):
        rows.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                     (stack, "relpos_bias", "rel_embedding"), True))
        rows.append((f"{stack}.final_layer_norm.weight", (stack, f"{stack}_norm", "scale"), False))
    for i in range(config.num_encoder_layers):
        block, path = f"encoder.block.{i}", ("encoder", f"layers_{i}")
        rows.append((f"{block}.layer.0.layer_norm.weight", path + ("pre_attention_layer_norm", "scale"), False))
        rows.extend(_attention_names(f"{block}.layer.0.SelfAttention", path + ("attention",)))
        rows.append((f"{block}.layer.1.layer_norm.weight", path + ("pre_mlp_layer_norm", "scale"), False))
        rows.extend(_mlp_names(config, f"{block}.layer.1.DenseReluDense", path))
    for i in range(config.num_decoder_layers):
        block, path = f"decoder.block.{i}", ("decoder", f"layers_{i}")
        rows.append((f"{block}.layer.0.layer_norm.weight", path + ("pre_self_attention_layer_norm", "scale"), False))
        rows.extend(_attention_names(f"{block}.layer.0.SelfAttention", path + ("self_attention",)))
        rows.append((f"{block}.layer.1.layer_norm.weight", path + ("pre_cross_attention_layer_norm", "scale"),
                     False))
        rows.extend(_attention_names(f"{block}.layer.1.EncDecAttention", path + ("encoder_decoder_attention",)))
        rows.append((f"{block}.layer.2.layer_norm.weight", path + ("pre_mlp_layer_norm", "scale"), False))
        rows.extend(_mlp_names(config, f"{block}.layer.2.DenseReluDense", path))
    return rows


def _expected_shape(config: T5Config, path: tuple[str, ...]) -> tuple[int, ...]:
    leaf, parent = path[-1], path[-2]
    d, inner, ff = config.d_model, config.inner_dim, config.d_ff
    if leaf == "embedding":
        return (config.vocab_size, d)
    if parent == "logits_dense":
        return (d, config.vocab_size)
    if leaf == "rel_embedding":
        return (config.num_heads, config.relative_attention_num_buckets)
    if leaf == "scale":
        return (d,)
    if parent in ("query", "key", "value"):
        return (d, inner)
    if parent == "out":
        return (inner, d)
    if parent in ("wi", "wi_0", "wi_1"):
        return (d, ff)
    if parent == "wo":
        return (ff, d)
    raise KeyError(path)


# ----------------------------------------------------------------------------- config

def config_from_hf_dict(hf: dict, tensor_names: set[str], lm_head_differs: bool | None,
                        **overrides: Any) -> T5Config:
    """Our T5Config from an HF config.json dict and the names of the tensors present."""
    feed_forward = hf.get("feed_forward_proj", "relu")
    if feed_forward not in ("relu", "gated-gelu"):
        raise ValueError(f"feed_forward_proj {feed_forward!r} is not supported (relu, gated-gelu)")
    tie_key = hf.get("tie_word_embeddings")
    if tie_key is False:
        tied = False
    else:
        tied = not ("lm_head.weight" in tensor_names and lm_head_differs)
    scale = hf["scale_decoder_outputs"] if "scale_decoder_outputs" in hf else tie_key is not False
    num_layers = hf.get("num_layers", 6)
    fields = dict(
        vocab_size=hf.get("vocab_size", 32128), d_model=hf.get("d_model", 512), num_heads=hf.get("num_heads", 8),
        d_kv=hf.get("d_kv", 64), d_ff=hf.get("d_ff", 2048), num_encoder_layers=num_layers,
        num_decoder_layers=hf.get("num_decoder_layers") or num_layers, mlp_activation=feed_forward,
        tie_word_embeddings=tied, scale_decoder_outputs=bool(scale),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6), dropout_rate=hf.get("dropout_rate", 0.1),
        pad_id=_first_int(hf.get("pad_token_id"), 0), eos_id=_first_int(hf.get("eos_token_id"), 1),
        decoder_start_id=_first_int(hf.get("decoder_start_token_id"), 0))
    fields.update(overrides)
    return T5Config(**fields)


def _first_int(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)


def config_to_hf_dict(config: T5Config) -> dict:
    """config.json contents for transformers' T5ForConditionalGeneration."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "feed_forward_proj": config.mlp_activation,
        "dense_act_fn": "gelu_new" if config.is_gated else "relu",
        "is_gated_act": config.is_gated,
        "is_encoder_decoder": True,
        "use_cache": True,
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_id,
        "tie_word_embeddings": config.tie_word_embeddings,
        "scale_decoder_outputs": config.scale_decoder_outputs,
    }


# ----------------------------------------------------------------------------- tensors

def _read_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors = {}
    # framework="flax" reads bfloat16 too (numpy has no bfloat16); convert to float32 numpy.
    with safe_open(str(file), framework="flax") as f:
        for name in f.keys():
            tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
    return tensors


def _read_pytorch_bin(file: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{file} is a PyTorch checkpoint; reading it needs torch "
                          f"(pip install torch), or convert it to model.safetensors") from e
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    return {name: t.detach().to(torch.float32).numpy() for name, t in state.items()}


def _unwrap_flax_state(state: dict, file: pathlib.Path) -> dict:
    """The parameter dict of a restored Flax state: a `{"params": ...}` variables dict and
    HF's base-model nesting (`{"transformer": ...}`, unwrapped by FlaxPreTrainedModel) are
    both taken off."""
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{file} does not hold a dict of parameters (got {type(state).__name__})")
    if "params" in state and set(state) <= {"params", "batch_stats"}:
        state = state["params"]
    if FLAX_BASE_MODEL_PREFIX in state and "shared" not in state:
        state = state[FLAX_BASE_MODEL_PREFIX]
    return state


def pytorch_name_from_flax_path(path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
    """(PyTorch tensor name, tensor) for one leaf of an HF Flax T5 parameter tree.

    The inverse of transformers' modeling_flax_pytorch_utils renaming: a Dense `kernel` is
    the transposed Linear `weight`, an Embed `embedding` the Embedding `weight`; T5's
    layer norm is called `weight` in both. Flax module names are the PyTorch ones
    (`encoder/block/0/layer/0/SelfAttention/q/kernel`). Other leaves keep their name, so
    the strict check reports them.
    """
    *modules, leaf = path
    if leaf == "kernel":
        return ".".join(modules + ["weight"]), value.T
    if leaf == "embedding":
        return ".".join(modules + ["weight"]), value
    return ".".join(path), value


def _read_flax_msgpack(file: pathlib.Path) -> dict[str, np.ndarray]:
    from flax import serialization, traverse_util

    state = _unwrap_flax_state(serialization.msgpack_restore(file.read_bytes()), file)
    tensors = {}
    for path, value in traverse_util.flatten_dict(state).items():
        # float32, bfloat16 and float16 leaves alike (numpy reads bfloat16 through ml_dtypes).
        name, tensor = pytorch_name_from_flax_path(tuple(str(key) for key in path),
                                                   np.asarray(value).astype(np.float32, copy=False))
        tensors[name] = tensor
    return tensors


def _read_sharded(directory: pathlib.Path, index_name: str, read_shard) -> dict[str, np.ndarray]:
    index = json.loads((directory / index_name).read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(read_shard(directory / shard))
    return tensors


def read_hf_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a save_pretrained directory under their PyTorch names, as float32
    numpy arrays, from the first weight file of `WEIGHT_NAMES` present."""
    directory = pathlib.Path(path)
    if (directory / SAFETENSORS_NAME).is_file():
        return _read_safetensors(directory / SAFETENSORS_NAME)
    if (directory / SAFETENSORS_INDEX_NAME).is_file():
        return _read_sharded(directory, SAFETENSORS_INDEX_NAME, _read_safetensors)
    if (directory / FLAX_NAME).is_file():
        return _read_flax_msgpack(directory / FLAX_NAME)
    if (directory / FLAX_INDEX_NAME).is_file():
        return _read_sharded(directory, FLAX_INDEX_NAME, _read_flax_msgpack)
    if (directory / PYTORCH_NAME).is_file():
        return _read_pytorch_bin(directory / PYTORCH_NAME)
    raise FileNotFoundError(f"none of {', '.join(WEIGHT_NAMES)} in {directory}")


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _map_leaves(tree: dict, fn) -> dict:
    return {k: _map_leaves(v, fn) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def _get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def params_from_hf_tensors(config: T5Config, tensors: dict[str, np.ndarray], strict: bool = True) -> dict:
    """Our parameter tree from HF tensors; missing/unexpected names and shape mismatches
    raise `CheckpointMismatchError` (unexpected names only log a warning when not strict)."""
    name_map = parameter_name_map(config)
    known = {hf for hf, _, _ in name_map}
    missing = sorted(known - set(tensors))
    unexpected = sorted(set(tensors) - known - set(EMBEDDING_ALIASES))
    if (config.tie_word_embeddings and "lm_head.weight" in unexpected
            and np.array_equal(tensors["lm_head.weight"], tensors.get("shared.weight"))):
        unexpected.remove("lm_head.weight")  # a tied model saved with its (identical) copy
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
    if problems:
        raise CheckpointMismatchError("checkpoint does not match the T5 config: " + "; ".join(problems))
    if unexpected:
        logger.warning("ignoring %d unexpected tensors: %s", len(unexpected), ", ".join(unexpected))
    for alias in EMBEDDING_ALIASES:
        if alias in tensors and not np.array_equal(tensors[alias], tensors["shared.weight"]):
            raise CheckpointMismatchError(f"{alias} differs from shared.weight; untied input embeddings "
                                          f"are not supported")
    params: dict = {}
    for hf, path, transpose in name_map:
        value = tensors[hf].T if transpose else tensors[hf]
        expected = _expected_shape(config, path)
        if tuple(value.shape) != expected:
            hf_expected = expected[::-1] if transpose else expected
            raise CheckpointMismatchError(f"tensor {hf} has shape {tuple(tensors[hf].shape)}, "
                                          f"expected {hf_expected} for this config")
        _set_path(params, path, np.ascontiguousarray(value, dtype=np.float32))
    return params


def hf_tensors_from_params(config: T5Config, params: dict) -> dict[str, np.ndarray]:
    """HF tensor dict (float32, contiguous) from our parameters (either layer layout)."""
    from dss_jax.model import unstack_layers

    if "layers" in params["encoder"]:
        params = unstack_layers(params, config)
    tensors = {}
    for hf, path, transpose in parameter_name_map(config):
        value = np.asarray(_get_path(params, path), dtype=np.float32)
        expected = _expected_shape(config, path)
        if tuple(value.shape) != expected:
            raise CheckpointMismatchError(f"parameter {'/'.join(path)} has shape {tuple(value.shape)}, "
                                          f"expected {expected}")
        tensors[hf] = np.ascontiguousarray(value.T if transpose else value)
    return tensors


# ----------------------------------------------------------------------------- public API

def load_hf_checkpoint(path: str | os.PathLike, *, strict: bool = True, **config_overrides: Any):
    """(config, params) from a Hugging Face T5 `save_pretrained` directory.

    `config_overrides` set our-only fields such as `dtype`, `scan_layers`, `remat_policy`
    or `dropout_rate`. With `scan_layers=True` the parameters come stacked.
    """
    directory = pathlib.Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found (expected a save_pretrained directory)")
    hf_config = json.loads(config_file.read_text())
    if hf_config.get("model_type", "t5") != "t5":
        raise ValueError(f"{config_file}: model_type {hf_config.get('model_type')!r} is not t5")
    tensors = read_hf_tensors(directory)
    lm_head_differs = None
    if "lm_head.weight" in tensors and "shared.weight" in tensors:
        lm_head_differs = not np.array_equal(tensors["lm_head.weight"], tensors["shared.weight"])
    config = config_from_hf_dict(hf_config, set(tensors), lm_head_differs, **config_overrides)
    params = params_from_hf_tensors(config, tensors, strict=strict)
    if config.param_dtype != "float32":
        import jax.numpy as jnp  # numpy knows bfloat16 only through JAX's ml_dtypes

        param_dtype = jnp.dtype(config.param_dtype)
        params = _map_leaves(params, lambda x: x.astype(param_dtype))
    if config.scan_layers:
        from dss_jax.model import stack_layers

        params = stack_layers(params, config)
    return config, params


def export_hf_checkpoint(config: T5Config, params: dict, path: str | os.PathLike) -> pathlib.Path:
    """Write config.json + model.safetensors (float32) that transformers loads."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors_from_params(config, params)
    save_file(tensors, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config_to_hf_dict(config), indent=2) + "\n")
    return directory
