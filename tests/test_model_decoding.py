"""Incremental decoding with the KV cache and `dss_jax.greedy_decode`."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dss_jax
from model_support import program_config, random_params as _random_params, tiny_config as _config
from dss_jax.decoding import compiled_greedy_decode
from dss_jax.model import T5, stack_layers

MAX_LEN = 8


def _encoder_tokens(batch=3, length=10, seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(2, 128, size=(batch, length)).astype(np.int32)
    tokens[1, 6:] = 0
    return tokens


def _step_by_step_and_full_logits(config, params):
    """Logits of a teacher-forced decoder input computed one cached step at a time, the
    final decode cache, and the same logits from one full forward pass."""
    model = T5(config)
    encoder = _encoder_tokens()
    decoder = np.random.RandomState(1).randint(2, 128, size=(3, MAX_LEN)).astype(np.int32)
    decoder[:, 0] = 0

    @jax.jit
    def step_by_step(p):
        encoded = model.apply({"params": p}, encoder, enable_dropout=False, method=T5.encode)

        def one_step(variables, tokens):
            logits, mutated = model.apply(variables, encoded, encoder, tokens, enable_dropout=False, decode=True,
                                          max_decode_length=MAX_LEN, method=T5.decode, mutable=["cache"])
            return {"params": p, "cache": mutated["cache"]}, logits[:, 0]

        variables, first = one_step({"params": p}, decoder[:, :1])
        variables, rest = jax.lax.scan(one_step, variables, jnp.asarray(decoder[:, 1:, None]).transpose(1, 0, 2))
        return jnp.concatenate([first[:, None], rest.transpose(1, 0, 2)], axis=1), variables["cache"]

    full = jax.jit(lambda p: model.apply({"params": p}, encoder, decoder, enable_dropout=False))(params)
    logits, cache = step_by_step(params)
    return logits, cache, full


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_step_by_step_logits_equal_the_full_forward(scan_layers):
    params = _random_params("t5_1_1_tiny")
    if scan_layers:
        params = stack_layers(params, _config())
    logits, _, full = _step_by_step_and_full_logits(_config(scan_layers=scan_layers), params)
    np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("program,cache_dtype", [("cpu", jnp.float32), ("accelerator", jnp.bfloat16)])
def test_bfloat16_decoding_keeps_caches_in_the_configured_dtype_and_follows_the_full_forward(program, cache_dtype):
    config = program_config(dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0, dtype="bfloat16"), program)
    logits, cache, full = _step_by_step_and_full_logits(config, _random_params("t5_1_1_tiny"))
    cached = {jax.tree_util.keystr(path): leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(cache)
              if "cached_" in jax.tree_util.keystr(path)}
    assert cached and all(dtype == cache_dtype for dtype in cached.values()), cached
    relative_error = np.linalg.norm(np.asarray(logits) - np.asarray(full)) / np.linalg.norm(np.asarray(full))
    assert relative_error < 2e-2, relative_error


def test_a_bfloat16_output_layer_decodes_step_by_step_as_its_full_forward():
    config = _config(dtype="bfloat16", logits_dot_in_fp32=False)
    logits, _, full = _step_by_step_and_full_logits(config, _random_params("t5_1_1_tiny"))
    assert logits.dtype == jnp.float32
    relative_error = np.linalg.norm(np.asarray(logits) - np.asarray(full)) / np.linalg.norm(np.asarray(full))
    assert relative_error < 2e-2, relative_error


@functools.lru_cache(maxsize=None)
def _greedy(name, eos_id, batch=3):
    config = _config(name)
    tokens = dss_jax.greedy_decode(T5(config), _random_params(name), _encoder_tokens(batch), MAX_LEN, eos_id=eos_id)
    return np.asarray(tokens)


def test_greedy_output_is_int32_batch_by_max_decode_len():
    tokens = dss_jax.greedy_decode(T5(_config()), _random_params("t5_1_1_tiny"), _encoder_tokens(), MAX_LEN)
    assert tokens.shape == (3, MAX_LEN) and tokens.dtype == jnp.int32


def test_greedy_tokens_are_the_argmax_of_the_teacher_forced_model():
    config = _config()
    params = _random_params("t5_1_1_tiny")
    tokens = _greedy("t5_1_1_tiny", eos_id=1)
    assert len(set(tokens.ravel())) > 3, "degenerate model output"
    assert not (tokens == 1).any(), "this test needs rows without EOS"
    decoder_inputs = np.concatenate([np.zeros((3, 1), np.int32), tokens[:, :-1]], axis=1)
    logits = jax.jit(lambda p: T5(config).apply({"params": p}, _encoder_tokens(), decoder_inputs,
                                                enable_dropout=False))(params)
    np.testing.assert_array_equal(np.argmax(logits, axis=-1), tokens)


def test_tokens_after_eos_are_padding_and_tokens_before_are_unchanged():
    without_eos = _greedy("t5_1_1_tiny", eos_id=1)
    eos = int(without_eos[0, 2])  # pretend the token row 0 emits at step 2 is EOS
    with_eos = _greedy("t5_1_1_tiny", eos_id=eos)
    for row_without, row_with in zip(without_eos, with_eos):
        hits = np.flatnonzero(row_without == eos)
        if hits.size == 0:
            np.testing.assert_array_equal(row_with, row_without)
            continue
        end = hits[0]
        np.testing.assert_array_equal(row_with[:end + 1], row_without[:end + 1])
        assert (row_with[end + 1:] == 0).all()
    assert (with_eos[0, 3:] == 0).all()


def test_same_shapes_reuse_one_compiled_program():
    config = _config()
    params = _random_params("t5_1_1_tiny")
    compiled = compiled_greedy_decode(config, MAX_LEN)
    dss_jax.greedy_decode(T5(config), params, _encoder_tokens(), MAX_LEN, eos_id=1)
    size = compiled._cache_size()
    dss_jax.greedy_decode(T5(config), params, _encoder_tokens(seed=5), MAX_LEN, eos_id=7)
    assert compiled._cache_size() == size
    assert compiled_greedy_decode(config, MAX_LEN) is compiled


def test_greedy_decode_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_decode_len"):
        dss_jax.greedy_decode(T5(_config()), _random_params("t5_1_1_tiny"), _encoder_tokens(), 0)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        dss_jax.greedy_decode(T5(_config()), _random_params("t5_1_1_tiny"), _encoder_tokens()[0], MAX_LEN)


def test_decode_mode_needs_max_decode_length():
    config = _config()
    model = T5(config)
    encoder = _encoder_tokens()
    with pytest.raises(ValueError, match="max_decode_length"):
        model.apply({"params": _random_params("t5_1_1_tiny")}, jnp.zeros((3, 10, 32)), encoder,
                    jnp.zeros((3, 1), jnp.int32), enable_dropout=False, decode=True, method=T5.decode,
                    mutable=["cache"])


def test_greedy_decode_with_scanned_layers_gives_the_same_tokens():
    config = _config(scan_layers=True)
    params = stack_layers(_random_params("t5_1_1_tiny"), _config())
    tokens = dss_jax.greedy_decode(T5(config), params, _encoder_tokens(), MAX_LEN, eos_id=1)
    np.testing.assert_array_equal(tokens, _greedy("t5_1_1_tiny", eos_id=1))


def test_decode_mode_rejects_packed_inputs():
    model = T5(_config())
    encoder = _encoder_tokens()
    with pytest.raises(ValueError, match="packed"):
        model.apply({"params": _random_params("t5_1_1_tiny")}, jnp.zeros((3, 10, 32)), encoder,
                    jnp.zeros((3, 1), jnp.int32), None, jnp.ones((3, 1), jnp.int32), enable_dropout=False,
                    decode=True, max_decode_length=MAX_LEN, method=T5.decode, mutable=["cache"])


@pytest.mark.parametrize("program", ["accelerator", "cpu_fp32"])
def test_transposed_step_kernels_give_the_same_logits_as_the_plain_layout(program):
    """With `decode_kernels="prepared"` decoding multiplies by cached [out, in] copies of
    the decoder kernels; with "stored" by the kernels as stored. Both give the same step logits."""
    config = program_config(dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0), program)
    params = _random_params("t5_1_1_tiny")
    encoder_tokens = _encoder_tokens()
    decoder_tokens = np.random.RandomState(1).randint(2, 128, size=(3, MAX_LEN)).astype(np.int32)

    def step_logits(decode_kernels):
        model = T5(config.replace(decode_kernels=decode_kernels))
        encoded = model.apply({"params": params}, encoder_tokens, method=T5.encode)
        variables, out = {"params": params}, []
        for i in range(MAX_LEN):
            logits, mutated = model.apply(variables, encoded, encoder_tokens, decoder_tokens[:, i:i + 1],
                                          decode=True, max_decode_length=MAX_LEN, method=T5.decode,
                                          mutable=["cache"])
            variables = {"params": params, "cache": mutated["cache"]}
            out.append(logits[:, 0])
        return np.stack(out, 1), mutated["cache"]

    transposed, cache = step_logits("prepared")
    assert "kernel_transposed" in cache["decoder"]["logits_dense"]
    plain, cache = step_logits("stored")
    assert "logits_dense" not in cache["decoder"]
    np.testing.assert_allclose(transposed, plain, rtol=1e-5, atol=1e-5)
