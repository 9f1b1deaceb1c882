"""Greedy decoding with a key/value cache, on one device or sharded over a training mesh.

`greedy_decode(model, params, encoder_input_tokens, max_decode_len)` encodes once, runs
the first decoder step (which creates the cache: self-attention keys/values for
`max_decode_len` steps and the cross-attention keys/values of the encoder output), then
a `jax.lax.while_loop` that feeds back the argmax token one step at a time and stops
early when every row has produced EOS. Output: int32 [batch, max_decode_len], without the
decoder start token; the EOS is kept and everything after it is the pad id 0.

What decoding multiplies by is an explicit `DecodeWeights`, which the caller builds once
per parameter set with `prepare_decode_weights` and passes to every call
(`greedy_decode_with_weights`, or the compiled `compiled_greedy_decode` /
`sharded_greedy_decode`); `greedy_decode` builds it on each call. With the config's
`decode_kernels="prepared"` it holds the kernels cast once to the compute dtype and the
decoder's per-step [out, in] kernel copies (`model.Dense`); with "stored" it is the
parameters as they are.

Sharded decoding (`sharded_greedy_decode`) runs under a `data` x `model` mesh and the
logical axis rules: the batch split over `data`, the parameters (and the weights prepared
from them) sharded as the rules say, never gathered onto one device.
`lower_sharded_greedy_decode` compiles it ahead of time from abstract shapes.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dss_jax import model as model_lib
from dss_jax import partitioning
from dss_jax.configs import T5Config
from dss_jax.model import T5

_STEP_KERNEL = "kernel_transposed"


def first_argmax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """int32 index of the largest value along `axis`, the first one on ties, the first NaN
    if there is one: `jnp.argmax`'s answer. Computed as a max and a min over indices,
    which XLA CPU runs faster than argmax's (value, index) reduction."""
    axis = axis % logits.ndim
    best = jnp.max(logits, axis=axis, keepdims=True)
    hit = (logits == best) | jnp.isnan(logits)
    indices = jax.lax.broadcasted_iota(jnp.int32, logits.shape, axis)
    return jnp.min(jnp.where(hit, indices, logits.shape[axis]), axis=axis)


class DecodeWeights(NamedTuple):
    """What decoding multiplies by. `params`: the parameters, with `decode_kernels="prepared"`
    and bfloat16 activations their kernels already in the compute dtype
    (`model.kernels_in_compute_dtype`: the same outputs without per-call casts);
    `step_kernels`: the decoder's per-step [out, in] kernel copies (`model.Dense`; empty
    with "stored")."""

    params: Any
    step_kernels: Any


def _step_kernels_fn(config: T5Config, params):
    """The per-step kernel copies the decode cache holds (`_STEP_KERNEL` entries), made by
    a first decoding step on a one-row, one-token input."""
    model = T5(config)
    tokens = jnp.zeros((1, 1), jnp.int32)
    encoded = model.apply({"params": params}, tokens, enable_dropout=False, method=T5.encode)
    _, mutated = model.apply({"params": params}, encoded, tokens, tokens, enable_dropout=False, decode=True,
                             max_decode_length=1, method=T5.decode, mutable=["cache"])
    flat = traverse_util.flatten_dict(mutated["cache"])
    return traverse_util.unflatten_dict({path: value for path, value in flat.items() if path[-1] == _STEP_KERNEL})


def _casts_kernels(config: T5Config) -> bool:
    """Whether prepared decode weights hold the kernels cast to the compute dtype."""
    return jnp.dtype(config.dtype) != jnp.dtype(config.param_dtype)


def _prepare_fn(config: T5Config, params) -> DecodeWeights:
    if _casts_kernels(config):
        params = model_lib.kernels_in_compute_dtype(params, config)
    return DecodeWeights(params, _step_kernels_fn(config, params))


def _transposed_spec(spec: PartitionSpec) -> PartitionSpec:
    """The spec of a kernel's [..., out, in] copy from the kernel's [..., in, out] spec."""
    axes = tuple(spec)
    return PartitionSpec(*axes[:-2], axes[-1], axes[-2]) if len(axes) >= 2 else spec


def decode_weights_shardings(config: T5Config, params_shardings) -> DecodeWeights:
    """Shardings of the `DecodeWeights` made from parameters with `params_shardings`
    (`NamedSharding`s): the parameters keep theirs, each per-step kernel copy has its
    kernel's sharding with the last two axes swapped."""
    model_lib.require_resolved(config)
    if config.decode_kernels == "stored":
        return DecodeWeights(params_shardings, {})
    shapes = jax.eval_shape(functools.partial(_step_kernels_fn, config), model_lib.abstract_params(config))
    flat_params = traverse_util.flatten_dict(params_shardings)
    step = {path: _transposed_copy_sharding(flat_params[path[:-1] + ("kernel",)])
            for path in traverse_util.flatten_dict(shapes)}
    return DecodeWeights(params_shardings, traverse_util.unflatten_dict(step))


def _transposed_copy_sharding(sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(sharding.mesh, _transposed_spec(sharding.spec))


@functools.lru_cache(maxsize=16)
def _compiled_kernel_cast(config: T5Config) -> Callable:
    return jax.jit(functools.partial(model_lib.kernels_in_compute_dtype, config=config))


@functools.lru_cache(maxsize=16)
def _compiled_step_kernels(config: T5Config) -> Callable:
    return jax.jit(functools.partial(_step_kernels_fn, config))


def prepare_decode_weights(config: T5Config, params, mesh: Mesh | None = None, rules=None) -> DecodeWeights:
    """The `DecodeWeights` of `params` for `config` (resolved). Build it once per
    parameter set and pass it to every decoding call. With a `mesh` and its logical axis
    `rules`, `params` are placed on the mesh as the rules say (arrays already placed so
    are used as they are) and the prepared copies are made there, sharded alike."""
    model_lib.require_resolved(config)
    cast, step_kernels = _compiled_kernel_cast(config), _compiled_step_kernels(config)
    if mesh is not None:
        params_shardings = partitioning.param_shardings(T5(config), mesh, rules)
        params = jax.device_put(params, params_shardings)
        cast = jax.jit(functools.partial(model_lib.kernels_in_compute_dtype, config=config),
                       out_shardings=params_shardings)
        step_kernels = jax.jit(functools.partial(_step_kernels_fn, config),
                               out_shardings=decode_weights_shardings(config, params_shardings).step_kernels)
    if config.decode_kernels == "stored":
        return DecodeWeights(params, {})
    if _casts_kernels(config):
        params = cast(params)
    return DecodeWeights(params, step_kernels(params))


def abstract_decode_weights(config: T5Config, mesh: Mesh, rules) -> DecodeWeights:
    """The `DecodeWeights` as `jax.ShapeDtypeStruct`s carrying their shardings on `mesh`
    (nothing allocated): with `lower_sharded_greedy_decode`, enough to compile sharded
    decoding ahead of time."""
    model_lib.require_resolved(config)
    params = model_lib.abstract_params(config)
    shapes = DecodeWeights(params, {}) if config.decode_kernels == "stored" else \
        jax.eval_shape(functools.partial(_prepare_fn, config), params)
    shardings = decode_weights_shardings(config, partitioning.param_shardings(T5(config), mesh, rules))
    return partitioning.with_sharding(shapes, shardings)


def _greedy_decode_fn(config: T5Config, max_decode_len: int, weights: DecodeWeights, encoder_input_tokens, eos_id):
    model = T5(config)
    params, step_kernels = weights
    encoder_input_tokens = encoder_input_tokens.astype(jnp.int32)
    batch = encoder_input_tokens.shape[0]
    encoded = model.apply({"params": params}, encoder_input_tokens, enable_dropout=False, method=T5.encode)

    def step(cache, tokens):
        logits, mutated = model.apply({"params": params, "cache": cache}, encoded, encoder_input_tokens,
                                      tokens[:, None], enable_dropout=False, decode=True,
                                      max_decode_length=max_decode_len, method=T5.decode, mutable=["cache"])
        # Reduced over the vocabulary as the leading axis: with prepared decode kernels the
        # output layer makes [vocab, batch] (`model.Dense`), which this reads in order
        # (docs/speed.md); otherwise a plain reduction.
        return first_argmax(jnp.transpose(logits[:, -1, :]), axis=0), mutated["cache"]

    start = jnp.full((batch,), config.decoder_start_id, jnp.int32)
    first, cache = step(step_kernels, start)  # creates the rest of the cache
    output = jnp.full((batch, max_decode_len), config.pad_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_id

    def keep_going(state):
        index, _, _, _, done = state
        return (index < max_decode_len) & ~jnp.all(done)

    def body(state):
        index, previous, cache, output, done = state
        token, cache = step(cache, previous)
        token = jnp.where(done, config.pad_id, token)
        output = jax.lax.dynamic_update_slice(output, token[:, None], (0, index))
        return index + 1, token, cache, output, done | (token == eos_id)

    state = (jnp.asarray(1, jnp.int32), first, cache, output, done)
    return jax.lax.while_loop(keep_going, body, state)[3]


def _check_max_decode_len(max_decode_len: int) -> int:
    if max_decode_len < 1:
        raise ValueError(f"max_decode_len must be at least 1, got {max_decode_len}")
    return int(max_decode_len)


@functools.lru_cache(maxsize=64)
def compiled_greedy_decode(config: T5Config, max_decode_len: int) -> Callable:
    """The jitted `(decode_weights, encoder_input_tokens, eos_id) -> tokens` function
    (jit keeps one executable per input shape; the EOS id is a traced int32, not a constant)."""
    model_lib.require_resolved(config)
    return jax.jit(functools.partial(_greedy_decode_fn, config, _check_max_decode_len(max_decode_len)))


@contextlib.contextmanager
def _sharding_context(mesh: Mesh, rules):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def sharded_greedy_decode(config: T5Config, max_decode_len: int, mesh: Mesh, rules) -> Callable:
    """Greedy decoding partitioned over `mesh`: the jitted `(decode_weights,
    encoder_input_tokens, eos_id) -> tokens` traced under the mesh and the logical axis
    `rules` (activation constraints apply), the tokens returned sharded over `data` like
    the input rows. The weights come as `prepare_decode_weights(config, params, mesh,
    rules)` made them, the inputs as a global array sharded over `data`
    (`partitioning.batch_sharding(mesh)`). `.lower(weights, tokens, eos_id)` lowers it
    under the same context (abstract arguments: `lower_sharded_greedy_decode`)."""
    return _sharded_greedy_decode(config, _check_max_decode_len(max_decode_len), mesh,
                                  tuple(tuple(rule) for rule in rules))


@functools.lru_cache(maxsize=64)
def _sharded_greedy_decode(config: T5Config, max_decode_len: int, mesh: Mesh, rules: tuple) -> Callable:
    model_lib.require_resolved(config)
    jitted = jax.jit(functools.partial(_greedy_decode_fn, config, max_decode_len),
                     out_shardings=partitioning.batch_sharding(mesh))

    def decode(weights: DecodeWeights, encoder_input_tokens, eos_id):
        with _sharding_context(mesh, rules):
            return jitted(weights, encoder_input_tokens, jnp.asarray(eos_id, jnp.int32))

    def lower(weights, encoder_input_tokens, eos_id):
        with _sharding_context(mesh, rules):
            return jitted.lower(weights, encoder_input_tokens, eos_id)

    decode.jitted, decode.lower = jitted, lower
    return decode


def lower_sharded_greedy_decode(config: T5Config, max_decode_len: int, mesh: Mesh, rules, batch_size: int,
                                input_length: int) -> jax.stages.Lowered:
    """`sharded_greedy_decode` lowered from abstract weights and a [batch_size,
    input_length] int32 batch sharded over `data` (nothing allocated): call `.compile()`
    for the executable and its `memory_analysis()` / `cost_analysis()`."""
    tokens = jax.ShapeDtypeStruct((batch_size, input_length), jnp.int32, sharding=partitioning.batch_sharding(mesh))
    eos_id = jax.ShapeDtypeStruct((), jnp.int32)
    return sharded_greedy_decode(config, max_decode_len, mesh, rules).lower(
        abstract_decode_weights(config, mesh, rules), tokens, eos_id)


def _as_token_batch(encoder_input_tokens) -> jax.Array:
    tokens = jnp.asarray(encoder_input_tokens)
    if tokens.ndim != 2:
        raise ValueError(f"encoder_input_tokens must be [batch, length], got shape {tokens.shape}")
    return tokens


def greedy_decode_with_weights(config: T5Config, weights: DecodeWeights, encoder_input_tokens, max_decode_len: int,
                               eos_id: int = 1) -> jax.Array:
    """Greedy decoding of one batch by `weights` (`prepare_decode_weights`): int32
    [batch, max_decode_len], pad id after EOS. Repeated calls with the same config,
    length and input shapes reuse one compiled program, whatever the EOS id."""
    decode = compiled_greedy_decode(config, max_decode_len)
    return decode(weights, _as_token_batch(encoder_input_tokens), jnp.asarray(eos_id, jnp.int32))


def greedy_decode(model: T5, params, encoder_input_tokens, max_decode_len: int, eos_id: int = 1) -> jax.Array:
    """Greedy (argmax) decoding: int32 [batch, max_decode_len], pad id after EOS.

    Prepares the decode weights on every call; to decode many batches with one parameter
    set, call `prepare_decode_weights` once and `greedy_decode_with_weights` per batch.
    """
    tokens = _as_token_batch(encoder_input_tokens)
    decode = compiled_greedy_decode(model.config, max_decode_len)  # checks the arguments first
    return decode(prepare_decode_weights(model.config, params), tokens, jnp.asarray(eos_id, jnp.int32))
