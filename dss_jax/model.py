"""The T5 encoder-decoder in Flax linen (T5X `layers.py` style), for T5 1.0 and T5 1.1.

Structure of the parameter tree (non-scanned; with `scan_layers=True` the `layers_{i}`
subtrees are one `layers` subtree whose leaves carry a leading `layers` axis):

    token_embedder/embedding                         [vocab, embed]
    encoder/relpos_bias/rel_embedding                [heads, relpos_buckets]
    encoder/layers_{i}/pre_attention_layer_norm/scale          [embed]
    encoder/layers_{i}/attention/{query,key,value}/kernel      [embed, joined_kv]
    encoder/layers_{i}/attention/out/kernel                    [joined_kv, embed]
    encoder/layers_{i}/pre_mlp_layer_norm/scale                [embed]
    encoder/layers_{i}/mlp/{wi_0,wi_1 | wi}/kernel             [embed, mlp]
    encoder/layers_{i}/mlp/wo/kernel                           [mlp, embed]
    encoder/encoder_norm/scale
    decoder/relpos_bias/rel_embedding
    decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
                        pre_cross_attention_layer_norm, encoder_decoder_attention,
                        pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel                      [embed, vocab]   (untied models only)

Conventions shared with Hugging Face / T5X: RMS layer norm in float32 without bias, no
biases anywhere, no 1/sqrt(d_kv) attention scaling (folded into the query init), relative
position biases computed once per stack and shared by its layers, pad id 0, decoder start
id 0. Logits are returned in float32.

Packed inputs: `*_segment_ids` restrict attention to the same segment (0 = padding) and
`*_positions` give each token's position inside its segment for the relative position
bias. For standard packing (positions restart at 0 and count up in each segment) the
positions are redundant: leaving them out gives the same logits and is cheaper, since the
bias is then shared across the batch.

How the model runs on a machine (which matmul programs, the MLP gate's and the decode
caches' dtypes, decode-time kernel copies) is the config's hardware fields
(`configs.HARDWARE_FIELDS`), set by `dss_jax.hardware.resolve` in the entrypoint: the
model reads nothing from the process, and refuses to run a config still holding "auto"
(parameters can be created from one: they do not depend on these choices).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dss_jax import cpu_matmul, hardware
from dss_jax.configs import T5Config

Array = jax.Array
MASK_VALUE = -1e10  # added to attention logits of masked pairs (float32)


# ----------------------------------------------------------------------------- helpers

def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _runs_cpu_program(matmul: str, dtype) -> bool:
    """Whether a product with `dtype` operands is one of `dss_jax.cpu_matmul`'s programs
    under the config's `matmul` choice."""
    dtype = jnp.dtype(dtype)
    if matmul == "cpu":
        return dtype in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
    return matmul == "cpu_fp32" and dtype == jnp.dtype(jnp.float32)


def require_resolved(config: T5Config) -> None:
    """Raise unless every hardware choice of `config` is explicit (none is "auto")."""
    unresolved = config.unresolved_hardware_fields
    if unresolved:
        values = ", ".join(f"{field}={getattr(config, field)!r}" for field in unresolved)
        raise ValueError(f"T5Config hardware choices are unresolved ({values}): call "
                         f"`config = dss_jax.hardware.resolve(config)` once in the entrypoint before building "
                         f"the model, or set them explicitly (e.g. matmul='xla', decode_kernels='stored')")


def _program_config(config: T5Config, initializing: bool) -> T5Config:
    """The config the layers run: `config` itself, which must be resolved, or while
    parameters are created (which do not depend on the hardware choices) any "auto"
    replaced by the portable accelerator choice."""
    if initializing:
        return hardware.portable(config)
    require_resolved(config)
    return config


def _constrain(x: Array, names: tuple[str, ...]) -> Array:
    """Logical sharding constraint; a no-op outside a `nn.logical_axis_rules` context."""
    return nn.with_logical_constraint(x, names)


def _query_init(d_kv: int) -> Callable:
    """fan-in normal init scaled by d_kv**-0.5: T5 folds attention scaling into the query."""
    base = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

    def init(key, shape, dtype=jnp.float32):
        return base(key, shape, dtype) / jnp.sqrt(d_kv).astype(dtype)

    return init


_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_MLP_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
_RELPOS_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int, xp=jnp):
    """T5's bucketing of `key_position - query_position` (same float32 arithmetic as HF).

    Small distances get their own bucket, larger ones share logarithmically wider buckets
    up to `max_distance`; bidirectional buckets split the range between the two signs.
    `xp` is `numpy` for shapes known at trace time, `jax.numpy` otherwise.
    """
    n = relative_position
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets = (n > 0).astype(xp.int32) * num_buckets
        n = xp.abs(n)
    else:
        n = -xp.minimum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    n_float = xp.maximum(n, 1).astype(xp.float32)
    scaled = (xp.log(n_float / xp.float32(max_exact)) / xp.float32(np.log(max_distance / max_exact))
              * xp.float32(num_buckets - max_exact))
    if_large = max_exact + scaled.astype(xp.int32)
    if_large = xp.minimum(if_large, num_buckets - 1)
    return buckets + xp.where(is_small, n, if_large).astype(xp.int32)


def _mask_to_bias(mask: Array) -> Array:
    return jnp.where(mask, 0.0, MASK_VALUE).astype(jnp.float32)


def _segment_mask(query_segments: Optional[Array], key_segments: Optional[Array]) -> Optional[Array]:
    """[B, 1, Lq, Lk] True where query and key are in the same packed segment."""
    if query_segments is None or key_segments is None:
        return None
    return (query_segments[:, :, None] == key_segments[:, None, :])[:, None]


def _combine_masks(*masks: Optional[Array]) -> Optional[Array]:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    return functools.reduce(jnp.logical_and, present)


# ----------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    """T5 layer norm: scale * x / sqrt(mean(x**2) + eps), no bias, math in float32."""

    epsilon: float
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), _dtype(self.param_dtype))
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(variance + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(_dtype(self.dtype))


class Dense(nn.Module):
    """Bias-free projection of the last axis with a 2-D kernel [in, out].

    `matmul`: the config's choice of program (`_runs_cpu_program`: `cpu_matmul.matmul`, the
    same math laid out the way XLA CPU multiplies fastest; otherwise a plain einsum).
    `step_kernel_copy`: on every incremental-decoding step (`decode_step=True`) multiply by
    an [out, in] copy of the kernel kept in the "cache" collection, made on the first step
    (the config's `decode_kernels="prepared"`; timings in docs/speed.md)."""

    features: int
    kernel_axes: tuple[str, str]
    kernel_init: Callable
    dtype: str
    param_dtype: str
    matmul: str = "xla"
    step_kernel_copy: bool = False

    @nn.compact
    def __call__(self, x: Array, decode_step: bool = False, result_dtype: Optional[str] = None) -> Array:
        """The product computed in `dtype`, returned in `result_dtype` (default `dtype`)."""
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                            (x.shape[-1], self.features), _dtype(self.param_dtype))
        dtype = _dtype(self.dtype)
        result_dtype = dtype if result_dtype is None else _dtype(result_dtype)
        if decode_step and self.step_kernel_copy:
            transposed = self.variable("cache", "kernel_transposed",
                                       lambda: jax.lax.optimization_barrier(jnp.transpose(kernel.astype(dtype))))
            rows = x.reshape(-1, x.shape[-1]).astype(dtype)
            # [out, rows] then transposed; the barrier stops XLA from folding the transpose
            # back into the matmul (which would bring back the slow [rows, out] product).
            # A float32 result: in bfloat16, the only form XLA CPU runs on the bf16 matrix units.
            y = jax.lax.optimization_barrier(
                jnp.einsum("fd,bd->fb", transposed.value, rows, preferred_element_type=jnp.float32))
            return jnp.transpose(y).astype(result_dtype).reshape(x.shape[:-1] + (self.features,))
        if _runs_cpu_program(self.matmul, dtype):
            return cpu_matmul.matmul(x, kernel, dtype.name, result_dtype.name)
        return jnp.einsum("...d,df->...f", x.astype(dtype), kernel.astype(dtype)).astype(result_dtype)


class Embed(nn.Module):
    """Token embedding [vocab, embed], shared by encoder, decoder and (tied) output layer."""

    num_embeddings: int
    features: int
    dtype: str
    param_dtype: str

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features), _dtype(self.param_dtype))

    def __call__(self, tokens: Array) -> Array:
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"token ids must be integers, got {tokens.dtype}")
        return jnp.take(self.embedding, tokens, axis=0).astype(_dtype(self.dtype))

    def attend(self, x: Array, operand_dtype: str = "float32") -> Array:
        """x @ embedding.T (the tied output layer): operands in `operand_dtype`, float32 result."""
        dtype = _dtype(operand_dtype)
        return jnp.einsum("...d,vd->...v", x.astype(dtype), self.embedding.astype(dtype),
                          preferred_element_type=jnp.float32)


class RelativePositionBias(nn.Module):
    """Per-head learned bias indexed by the bucketed relative position, [heads, buckets]."""

    config: T5Config
    bidirectional: bool

    def setup(self):
        cfg = self.config
        self.rel_embedding = self.param(
            "rel_embedding", nn.with_logical_partitioning(_RELPOS_INIT, ("heads", "relpos_buckets")),
            (cfg.num_heads, cfg.relative_attention_num_buckets), _dtype(cfg.param_dtype))

    def _buckets(self, relative_position, xp):
        cfg = self.config
        return relative_position_bucket(relative_position, self.bidirectional,
                                        cfg.relative_attention_num_buckets,
                                        cfg.relative_attention_max_distance, xp=xp)

    def static(self, query_length: int, key_length: int) -> Array:
        """[1, heads, Lq, Lk] for positions 0..L-1 (buckets are a trace-time constant)."""
        relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
        buckets = self._buckets(relative, np)
        bias = jnp.take(self.rel_embedding.astype(jnp.float32), jnp.asarray(buckets), axis=1)
        return bias[None]

    def from_positions(self, query_positions: Array, key_positions: Array) -> Array:
        """[B, heads, Lq, Lk] for explicit positions [B, Lq] and [B, Lk]."""
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = self._buckets(relative.astype(jnp.int32), jnp)
        bias = jnp.take(self.rel_embedding.astype(jnp.float32), buckets, axis=1)  # [H, B, Lq, Lk]
        return jnp.transpose(bias, (1, 0, 2, 3))

    def __call__(self, query_positions, key_positions, query_length: int, key_length: int) -> Array:
        if query_positions is None or key_positions is None:
            return self.static(query_length, key_length)
        return self.from_positions(query_positions, key_positions)


def _split_heads(x: Array, num_heads: int) -> Array:
    return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


def _heads_major(x: Array) -> Array:
    """[B, L, H, D] -> [B, H, L, D], the layout of the decode caches."""
    return jnp.swapaxes(x, 1, 2)


def dot_product_attention(query: Array, key: Array, value: Array, bias: Array, *,
                          dropout_rate: float, deterministic: bool, dropout_rng_module: nn.Module,
                          dtype, heads_major_kv: bool = False, matmul: str = "xla") -> Array:
    """softmax(q.k + bias) v, scores accumulated and normalised in float32.

    q [B, Lq, H, D]; k/v [B, Lk, H, D], or [B, H, Lk, D] with `heads_major_kv` (the decode
    caches: in that layout the batched matmuls read them in place, with no per-step
    transpose of the whole cache). Output [B, Lq, H, D]. In bfloat16 under the config's
    `matmul="cpu"`, the two products (not the decode steps') are `cpu_matmul.einsum`.
    """
    kv = "bhkd" if heads_major_kv else "bkhd"
    bf16_cpu = _runs_cpu_program(matmul, dtype) and dtype == jnp.bfloat16 and not heads_major_kv
    if bf16_cpu:
        logits = cpu_matmul.einsum(f"bqhd,{kv}->bhqk", query, key)
    else:
        logits = jnp.einsum(f"bqhd,{kv}->bhqk", query, key, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits + bias, axis=-1)
    if dropout_rate > 0.0 and not deterministic:
        rng = dropout_rng_module.make_rng("dropout")
        keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    if bf16_cpu:
        return cpu_matmul.einsum(f"bhqk,{kv}->bqhd", weights, value).astype(dtype)
    return jnp.einsum(f"bhqk,{kv}->bqhd", weights.astype(value.dtype), value).astype(dtype)


def _dense(cfg: T5Config, features: int, kernel_axes: tuple[str, str], init: Callable, name: str,
           dtype: Optional[str] = None) -> Dense:
    """A `Dense` layer of the model computing in `dtype` (default the activation dtype)
    with the config's matmul program and decode-step kernel copies."""
    return Dense(features, kernel_axes, init, dtype or cfg.dtype, cfg.param_dtype, matmul=cfg.matmul,
                 step_kernel_copy=cfg.decode_kernels == "prepared", name=name)


class Attention(nn.Module):
    """Multi-head attention without biases or scaling; KV caches for incremental decoding.

    Self-attention in decode mode keeps `cached_key`/`cached_value` [B, H, max_len, D]
    and writes the new step at `decode_position`. Cross-attention in decode mode computes
    the encoder keys/values on the first step, stores them as [B, H, L_enc, D] and reuses
    them afterwards. Caches are heads-major so that each step's attention matmuls read
    them without transposing them.
    """

    config: T5Config
    is_cross_attention: bool = False
    deterministic: bool = True
    decode: bool = False

    def _project(self, name: str, x: Array, init: Callable, decode_step: bool = False) -> Array:
        """x times the named kernel, split into heads [B, L, H, D] (`decode_step`: see `Dense`)."""
        cfg = self.config
        y = _dense(cfg, cfg.inner_dim, ("embed", "joined_kv"), init, name)(x, decode_step=decode_step)
        return _constrain(_split_heads(y, cfg.num_heads), ("batch", "length", "heads", "kv"))

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array,
                 decode_position: Optional[Array] = None, max_decode_length: Optional[int] = None) -> Array:
        cfg = self.config
        query = self._project("query", inputs_q, _query_init(cfg.d_kv), decode_step=self.decode)
        if self.decode and self.is_cross_attention:
            key, value = self._cached_cross_key_value(inputs_kv)
        else:
            key = self._project("key", inputs_kv, _KERNEL_INIT, decode_step=self.decode)
            value = self._project("value", inputs_kv, _KERNEL_INIT, decode_step=self.decode)
            if self.decode:
                key, value = self._update_self_cache(key, value, decode_position, max_decode_length)
        out = dot_product_attention(query, key, value, bias, dropout_rate=cfg.dropout_rate,
                                    deterministic=self.deterministic, dropout_rng_module=self,
                                    dtype=_dtype(cfg.dtype), heads_major_kv=self.decode, matmul=cfg.matmul)
        out = _constrain(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(out.shape[:-2] + (cfg.inner_dim,))
        return _dense(cfg, cfg.d_model, ("joined_kv", "embed"), _KERNEL_INIT, "out")(out, decode_step=self.decode)

    def _update_self_cache(self, key, value, decode_position, max_decode_length):
        if decode_position is None or max_decode_length is None:
            raise ValueError("decode=True needs decode_position and max_decode_length")
        batch, step_length, heads, depth = key.shape
        if step_length != 1:
            raise ValueError(f"incremental decoding takes one token per step, got {step_length}")
        shape = (batch, heads, max_decode_length, depth)
        dtype = _dtype(self.config.decode_cache_dtype)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, dtype)
        start = (0, 0, decode_position, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, _heads_major(key).astype(dtype), start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, _heads_major(value).astype(dtype),
                                                          start)
        return cached_key.value, cached_value.value

    def _cached_cross_key_value(self, encoded):
        initialized = self.has_variable("cache", "cached_cross_key")
        if initialized:
            return (self.get_variable("cache", "cached_cross_key"),
                    self.get_variable("cache", "cached_cross_value"))
        key = _heads_major(self._project("key", encoded, _KERNEL_INIT))
        value = _heads_major(self._project("value", encoded, _KERNEL_INIT))
        dtype = _dtype(self.config.decode_cache_dtype)
        key, value = key.astype(dtype), value.astype(dtype)
        self.put_variable("cache", "cached_cross_key", key)
        self.put_variable("cache", "cached_cross_value", value)
        return key, value


class MLP(nn.Module):
    """Gated-GELU (T5 1.1: gelu(x W0) * (x W1)) or ReLU (T5 1.0) feed-forward, then Wo."""

    config: T5Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config

        def dense_in(name, result_dtype=None):
            return _dense(cfg, cfg.d_ff, ("embed", "mlp"), _MLP_INIT, name)(
                x, decode_step=self.decode, result_dtype=result_dtype)

        if cfg.is_gated:
            # The gate in the config's `mlp_gate_dtype`, from the products returned in it,
            # then cast once to the activation dtype.
            gate_dtype = cfg.mlp_gate_dtype
            gate = jax.nn.gelu(dense_in("wi_0", gate_dtype), approximate=True) * dense_in("wi_1", gate_dtype)
            hidden = gate.astype(_dtype(cfg.dtype))
        else:
            hidden = jax.nn.relu(dense_in("wi"))
        hidden = _constrain(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
        return _dense(cfg, cfg.d_model, ("mlp", "embed"), _MLP_INIT, "wo")(hidden, decode_step=self.decode)


def _norm(cfg: T5Config, name: str) -> RMSNorm:
    return RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name=name)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention block and MLP block, each with a residual connection."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, position_bias: Array, mask_bias: Array):
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate)
        h = _norm(cfg, "pre_attention_layer_norm")(x)
        h = Attention(cfg, deterministic=self.deterministic, name="attention")(h, h, position_bias + mask_bias)
        x = x + dropout(h, deterministic=self.deterministic)
        x = _constrain(x, ("batch", "length", "embed"))
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        h = MLP(cfg, deterministic=self.deterministic, name="mlp")(h)
        x = x + dropout(h, deterministic=self.deterministic)
        return _constrain(x, ("batch", "length", "embed")), None


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, MLP; pre-norm residuals."""

    config: T5Config
    deterministic: bool = True
    decode: bool = False
    max_decode_length: Optional[int] = None

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
                 decode_position: Optional[Array]):
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate)
        h = _norm(cfg, "pre_self_attention_layer_norm")(x)
        h = Attention(cfg, deterministic=self.deterministic, decode=self.decode, name="self_attention")(
            h, h, self_bias, decode_position, self.max_decode_length)
        x = x + dropout(h, deterministic=self.deterministic)
        h = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        h = Attention(cfg, is_cross_attention=True, deterministic=self.deterministic, decode=self.decode,
                      name="encoder_decoder_attention")(h, encoded, cross_bias)
        x = x + dropout(h, deterministic=self.deterministic)
        x = _constrain(x, ("batch", "length", "embed"))
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        h = MLP(cfg, deterministic=self.deterministic, decode=self.decode, name="mlp")(h)
        x = x + dropout(h, deterministic=self.deterministic)
        return _constrain(x, ("batch", "length", "embed")), None


def _remat_policy(name: str):
    if name == "full":
        return None  # save nothing: recompute the whole layer in the backward pass
    if name == "minimal":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    raise ValueError(f"no remat policy for {name!r}")


def _run_layers(layer_cls, config: T5Config, num_layers: int, x: Array, broadcast_args: tuple,
                layer_kwargs: dict, allow_remat: bool) -> Array:
    """Apply `num_layers` layers, optionally rematerialised and/or scanned (must be called
    inside a compact method; the layers become children of the calling module)."""
    if config.remat_policy != "none" and allow_remat:
        layer_cls = nn.remat(layer_cls, policy=_remat_policy(config.remat_policy),
                             prevent_cse=not config.scan_layers)
    if config.scan_layers:
        scanned = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                          split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast,) * len(broadcast_args), length=num_layers,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scanned(config, name="layers", **layer_kwargs)(x, *broadcast_args)
        return x
    for i in range(num_layers):
        x, _ = layer_cls(config, name=f"layers_{i}", **layer_kwargs)(x, *broadcast_args)
    return x


# ----------------------------------------------------------------------------- stacks

class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
                 encoder_positions: Optional[Array] = None, *, deterministic: bool = True) -> Array:
        cfg = self.config
        length = encoder_input_tokens.shape[1]
        x = self.shared_embedding(encoder_input_tokens)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = _constrain(x, ("batch", "length", "embed"))
        position_bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(
            encoder_positions, encoder_positions, length, length)
        key_is_real = (encoder_input_tokens != cfg.pad_id)[:, None, None, :]
        mask = _combine_masks(key_is_real, _segment_mask(encoder_segment_ids, encoder_segment_ids))
        x = _run_layers(EncoderLayer, cfg, cfg.num_encoder_layers, x, (position_bias, _mask_to_bias(mask)),
                        {"deterministic": deterministic}, allow_remat=True)
        x = _norm(cfg, "encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
                 decoder_positions: Optional[Array] = None, *, deterministic: bool = True,
                 decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
        cfg = self.config
        length = decoder_input_tokens.shape[1]
        relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
        if decode:
            if max_decode_length is None:
                raise ValueError("decode=True needs max_decode_length")
            if any(x is not None for x in (encoder_segment_ids, decoder_segment_ids, decoder_positions)):
                raise ValueError("decode=True decodes one sequence per row: segment ids and positions "
                                 "(packed inputs) are not supported")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            decode_position = position.value
            position.value = decode_position + 1
            key_positions = jnp.arange(max_decode_length, dtype=jnp.int32)
            self_bias = relpos.from_positions(decode_position[None, None], key_positions[None, :])
            self_bias = self_bias + _mask_to_bias(key_positions <= decode_position)[None, None, None, :]
        else:
            decode_position = None
            position_bias = relpos(decoder_positions, decoder_positions, length, length)
            causal = np.tril(np.ones((length, length), dtype=bool))[None, None]
            mask = _combine_masks(jnp.asarray(causal), _segment_mask(decoder_segment_ids, decoder_segment_ids))
            self_bias = position_bias + _mask_to_bias(mask)
        key_is_real = (encoder_input_tokens != cfg.pad_id)[:, None, None, :]
        cross_mask = _combine_masks(key_is_real, _segment_mask(decoder_segment_ids, encoder_segment_ids))
        cross_bias = _mask_to_bias(cross_mask)

        x = self.shared_embedding(decoder_input_tokens)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = _constrain(x, ("batch", "length", "embed"))
        layer_kwargs = {"deterministic": deterministic, "decode": decode, "max_decode_length": max_decode_length}
        x = _run_layers(DecoderLayer, cfg, cfg.num_decoder_layers, x,
                        (encoded, self_bias, cross_bias, decode_position), layer_kwargs, allow_remat=not decode)
        x = _norm(cfg, "decoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if cfg.scale_decoder_outputs:
            x = x * (cfg.d_model ** -0.5)
        if cfg.tie_word_embeddings:
            logits = self.shared_embedding.attend(x, cfg.logits_operand_dtype)
        else:
            logits = _dense(cfg, cfg.vocab_size, ("embed", "vocab"), _MLP_INIT, "logits_dense",
                            dtype=cfg.logits_operand_dtype)(x, decode_step=decode, result_dtype="float32")
        return _constrain(logits, ("batch", "length", "vocab"))


class T5(nn.Module):
    """T5 encoder-decoder. `__call__` returns float32 logits [batch, decoder_length, vocab].

    Applying it needs a resolved config (`dss_jax.hardware.resolve`); `init` does not."""

    config: T5Config

    def setup(self):
        cfg = _program_config(self.config, self.is_initializing())
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, cfg.dtype, cfg.param_dtype)
        self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
        self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None, *, enable_dropout: bool = True) -> Array:
        """Encoder output [batch, encoder_length, d_model] in the activation dtype."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, *, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
        """Decoder logits. With `decode=True`, `decoder_input_tokens` is one token per row
        [batch, 1] and the `cache` collection must be mutable; the first such call creates
        the cache (for `max_decode_length` steps), every call advances it by one step."""
        return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                            decoder_segment_ids, decoder_positions, deterministic=not enable_dropout,
                            decode=decode, max_decode_length=max_decode_length)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
                 encoder_positions: Optional[Array] = None, decoder_positions: Optional[Array] = None, *,
                 enable_dropout: bool = True) -> Array:
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout=enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                           decoder_segment_ids, decoder_positions, enable_dropout=enable_dropout)


# ----------------------------------------------------------------------------- params

def init_variables(config: T5Config, rng: Array) -> dict:
    """`T5(config).init` on dummy [1, 1] tokens without dropout: {"params": ...} with each
    leaf boxed in `nn.LogicallyPartitioned` (use under `jax.eval_shape` or a sharded jit)."""
    tokens = jnp.ones((1, 1), jnp.int32)
    return T5(config).init({"params": rng}, tokens, tokens, enable_dropout=False)


def init_params(config: T5Config, rng: Any = 0) -> dict:
    """Randomly initialised parameters (plain arrays, logical-axis boxes removed)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    return nn.unbox(jax.jit(init_variables, static_argnums=0)(config, rng)["params"])


def abstract_params(config: T5Config, boxed: bool = False) -> dict:
    """Parameter shapes/dtypes as `jax.ShapeDtypeStruct`s, without allocating anything."""
    variables = jax.eval_shape(functools.partial(init_variables, config), jax.random.PRNGKey(0))
    params = variables["params"]
    return params if boxed else nn.unbox(params)


def param_logical_axes(config: T5Config) -> dict:
    """Tree of `PartitionSpec`s holding each parameter's logical axis names."""
    return nn.get_partition_spec(abstract_params(config, boxed=True))


def _layer_count(stack: str, config: T5Config) -> int:
    return config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers


def stack_layers(params: dict, config: T5Config) -> dict:
    """Convert a `layers_{i}` parameter tree to the `scan_layers=True` layout (leading axis)."""
    out = dict(params)
    for stack in ("encoder", "decoder"):
        sub = dict(params[stack])
        if "layers" in sub:
            raise ValueError(f"{stack} parameters are already stacked")
        per_layer = [sub.pop(f"layers_{i}") for i in range(_layer_count(stack, config))]
        sub["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_layer)
        out[stack] = sub
    return out


def unstack_layers(params: dict, config: T5Config) -> dict:
    """Convert a `scan_layers=True` parameter tree to the `layers_{i}` layout."""
    out = dict(params)
    for stack in ("encoder", "decoder"):
        sub = dict(params[stack])
        if "layers" not in sub:
            raise ValueError(f"{stack} parameters are not stacked")
        stacked = sub.pop("layers")
        for i in range(_layer_count(stack, config)):
            sub[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
        out[stack] = sub
    return out


def kernels_in_compute_dtype(params: dict, config: T5Config) -> dict:
    """`params` with every projection kernel cast to the dtype the model multiplies it in:
    `config.dtype`, or `config.logits_operand_dtype` for the output layer's (`logits_dense`,
    float32 unless `logits_dot_in_fp32=False`). The model casts them itself on every
    call, so the outputs are bitwise the same; for inference on fixed parameters, where
    the per-call casts are wasted work (docs/speed.md). Everything else keeps its dtype."""

    def cast(path, leaf):
        names = [getattr(entry, "key", None) for entry in path]
        if names[-1] != "kernel":
            return leaf
        return leaf.astype(config.logits_operand_dtype if "logits_dense" in names else config.dtype)

    return jax.tree_util.tree_map_with_path(cast, params)
