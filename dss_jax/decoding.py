"""Greedy decoding with a key/value cache, compiled once per (config, length) and input shape.

`greedy_decode(model, params, encoder_input_tokens, max_decode_len)` encodes once, runs
the first decoder step (which creates the cache: self-attention keys/values for
`max_decode_len` steps and the cross-attention keys/values of the encoder output), then
a `jax.lax.while_loop` that feeds back the argmax token one step at a time and stops
early when every row has produced EOS. Output: int32 [batch, max_decode_len], without the
decoder start token; the EOS is kept and everything after it is the pad id 0.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from dss_jax.configs import T5Config
from dss_jax.model import T5


def _greedy_decode_fn(config: T5Config, max_decode_len: int, params, encoder_input_tokens, eos_id):
    model = T5(config)
    encoder_input_tokens = encoder_input_tokens.astype(jnp.int32)
    batch = encoder_input_tokens.shape[0]
    encoded = model.apply({"params": params}, encoder_input_tokens, enable_dropout=False, method=T5.encode)

    def step(cache, tokens):
        variables = {"params": params} if cache is None else {"params": params, "cache": cache}
        logits, mutated = model.apply(variables, encoded, encoder_input_tokens, tokens[:, None],
                                      enable_dropout=False, decode=True, max_decode_length=max_decode_len,
                                      method=T5.decode, mutable=["cache"])
        return jnp.argmax(logits[:, -1, :], axis=-1).astype(jnp.int32), mutated["cache"]

    start = jnp.full((batch,), config.decoder_start_id, jnp.int32)
    first, cache = step(None, start)
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


@functools.lru_cache(maxsize=64)
def compiled_greedy_decode(config: T5Config, max_decode_len: int) -> Callable:
    """The jitted `(params, encoder_input_tokens, eos_id) -> tokens` function (jit keeps
    one executable per input shape; the EOS id is a traced int32, not a constant)."""
    if max_decode_len < 1:
        raise ValueError(f"max_decode_len must be at least 1, got {max_decode_len}")
    return jax.jit(functools.partial(_greedy_decode_fn, config, int(max_decode_len)))


def greedy_decode(model: T5, params, encoder_input_tokens, max_decode_len: int, eos_id: int = 1) -> jax.Array:
    """Greedy (argmax) decoding: int32 [batch, max_decode_len], pad id after EOS.

    Repeated calls with the same config, length and input shapes reuse one compiled
    program (no retracing), whatever the EOS id.
    """
    encoder_input_tokens = jnp.asarray(encoder_input_tokens)
    if encoder_input_tokens.ndim != 2:
        raise ValueError(f"encoder_input_tokens must be [batch, length], got shape {encoder_input_tokens.shape}")
    return compiled_greedy_decode(model.config, max_decode_len)(params, encoder_input_tokens,
                                                                 jnp.asarray(eos_id, jnp.int32))
