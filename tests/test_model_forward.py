"""The Flax T5's forward pass: layer layouts, packing, remat, dtypes, dropout, axis names
(the sharding constraints on a real mesh: tests/test_model_sharding.py).

Compilation dominates the run time of these tests on CPU, so they share jitted functions
and make parameters with numpy (`model_support.random_params`) instead of compiling an init.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model_support import random_params as _random_params, tiny_config as _config
from dss_jax.model import T5, abstract_params, init_params, param_logical_axes, stack_layers, unstack_layers

PARAM_AXIS_NAMES = {"vocab", "embed", "mlp", "heads", "kv", "joined_kv", "relpos_buckets", "layers"}
STYLES = ["t5_1_1_tiny", "t5_1_0_tiny"]


@functools.lru_cache(maxsize=None)
def _logits_fn(config):
    return jax.jit(lambda params, *args: T5(config).apply({"params": params}, *args, enable_dropout=False))


def _batch(seed=0, batch=2, encoder_length=9, decoder_length=7):
    rng = np.random.RandomState(seed)
    encoder = rng.randint(2, 128, size=(batch, encoder_length)).astype(np.int32)
    decoder = rng.randint(2, 128, size=(batch, decoder_length)).astype(np.int32)
    decoder[:, 0] = 0
    return encoder, decoder


def test_logits_are_float32_batch_by_length_by_vocab():
    encoder, decoder = _batch()
    logits = _logits_fn(_config())(_random_params("t5_1_1_tiny"), encoder, decoder)
    assert logits.shape == (2, 7, 128) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", STYLES)
def test_scanned_and_unrolled_layers_give_same_logits(name):
    encoder, decoder = _batch()
    params = _random_params(name)
    unrolled = _logits_fn(_config(name))(params, encoder, decoder)
    scanned = _logits_fn(_config(name, scan_layers=True))(stack_layers(params, _config(name)), encoder, decoder)
    np.testing.assert_allclose(scanned, unrolled, atol=1e-5, rtol=1e-5)


def test_stack_then_unstack_layers_is_identity():
    params = _random_params("t5_1_1_tiny")
    config = _config()
    again = unstack_layers(stack_layers(params, config), config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_init_params_makes_every_parameter_with_scanned_layers_stacked():
    config = _config(scan_layers=True)
    params = init_params(config, 0)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(abstract_params(config))
    assert params["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (2, 32, 64)
    assert "layers_0" not in params["decoder"]
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("name", STYLES)
def test_every_parameter_has_logical_axis_names(name, scan_layers):
    config = _config(name, scan_layers=scan_layers)
    specs = param_logical_axes(config)
    shapes = abstract_params(config)
    spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    shape_leaves = jax.tree_util.tree_leaves(shapes)
    assert len(spec_leaves) == len(shape_leaves)
    for spec, shape in zip(spec_leaves, shape_leaves):
        assert isinstance(spec, jax.sharding.PartitionSpec)
        assert len(spec) == len(shape.shape) and set(spec) <= PARAM_AXIS_NAMES, (spec, shape)
    if scan_layers:
        assert specs["encoder"]["layers"]["attention"]["query"]["kernel"] == jax.sharding.PartitionSpec(
            "layers", "embed", "joined_kv")


def test_padding_the_encoder_further_does_not_change_logits():
    encoder, decoder = _batch()
    params = _random_params("t5_1_1_tiny")
    logits = _logits_fn(_config())(params, encoder, decoder)
    padded = np.concatenate([encoder, np.zeros((2, 5), np.int32)], axis=1)
    np.testing.assert_allclose(_logits_fn(_config())(params, padded, decoder), logits, atol=1e-5)


def _pack(first, second, length):
    """Two sequences in one row, then padding: tokens, segment ids, positions."""
    tokens = np.zeros(length, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    tokens[:len(first)] = first
    tokens[len(first):len(first) + len(second)] = second
    segments[:len(first)] = 1
    segments[len(first):len(first) + len(second)] = 2
    positions[:len(first)] = np.arange(len(first))
    positions[len(first):len(first) + len(second)] = np.arange(len(second))
    return tokens[None], segments[None], positions[None]


@pytest.mark.parametrize("name,with_positions", [("t5_1_1_tiny", True), ("t5_1_0_tiny", True),
                                                 ("t5_1_1_tiny", False)])
def test_packed_row_gives_each_sequence_its_unpacked_logits(name, with_positions):
    config = _config(name)
    params = _random_params(name)
    encoder, decoder = _batch(encoder_length=6, decoder_length=5)
    encoder_a, encoder_b = encoder[0], encoder[1, :4]
    decoder_a, decoder_b = decoder[0], decoder[1, :3]
    enc_tokens, enc_segments, enc_positions = _pack(encoder_a, encoder_b, 13)
    dec_tokens, dec_segments, dec_positions = _pack(decoder_a, decoder_b, 10)
    if not with_positions:
        enc_positions = dec_positions = None
    packed = _logits_fn(config)(params, enc_tokens, dec_tokens, enc_segments, dec_segments,
                                enc_positions, dec_positions)[0]
    both = _logits_fn(config)(params, np.stack([encoder_a, np.pad(encoder_b, (0, 2))]),
                              np.stack([decoder_a, np.pad(decoder_b, (0, 2))]))
    np.testing.assert_allclose(packed[:5], both[0], atol=1e-5)
    np.testing.assert_allclose(packed[5:8], both[1, :3], atol=1e-5)


def _grads(config, params, encoder, decoder):
    def loss(p):
        logits = T5(config).apply({"params": p}, encoder, decoder, enable_dropout=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, decoder).mean()

    return jax.jit(jax.grad(loss))(params)


def test_rematerialisation_gives_the_same_gradients():
    encoder, decoder = _batch()
    config = _config()
    params = _random_params("t5_1_1_tiny")
    reference = _grads(config, params, encoder, decoder)
    full = _grads(config.replace(remat_policy="full"), params, encoder, decoder)
    minimal_scanned = unstack_layers(_grads(config.replace(remat_policy="minimal", scan_layers=True),
                                            stack_layers(params, config), encoder, decoder), config)
    for grads in (full, minimal_scanned):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                               grads, reference)


def test_bfloat16_activations_keep_float32_params_and_logits():
    config = _config(dtype="bfloat16")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(abstract_params(config)))
    params = _random_params("t5_1_1_tiny")
    encoder, decoder = _batch()
    model = T5(config)
    encoded = jax.eval_shape(lambda p: model.apply({"params": p}, encoder, enable_dropout=False,
                                                   method=T5.encode), params)
    logits = jax.eval_shape(lambda p: model.apply({"params": p}, encoder, decoder, enable_dropout=False), params)
    assert (encoded.dtype, logits.dtype) == (jnp.bfloat16, jnp.float32)


@pytest.mark.parametrize("name", STYLES)
def test_a_bfloat16_output_layer_still_gives_float32_logits_close_to_the_float32_product(name):
    params = _random_params(name)
    encoder, decoder = _batch()
    fp32_dot = np.asarray(_logits_fn(_config(name, dtype="bfloat16"))(params, encoder, decoder))
    bf16_dot = _logits_fn(_config(name, dtype="bfloat16", logits_dot_in_fp32=False))(params, encoder, decoder)
    assert bf16_dot.dtype == jnp.float32
    bf16_dot = np.asarray(bf16_dot)
    relative_error = np.linalg.norm(bf16_dot - fp32_dot) / np.linalg.norm(fp32_dot)
    assert 0 < relative_error < 2e-2, relative_error  # rounded operands, float32 sums


@pytest.mark.parametrize("name", STYLES)
def test_in_float32_the_output_layer_setting_changes_nothing(name):
    params = _random_params(name)
    encoder, decoder = _batch()
    np.testing.assert_array_equal(_logits_fn(_config(name, logits_dot_in_fp32=False))(params, encoder, decoder),
                                  _logits_fn(_config(name))(params, encoder, decoder))


def test_encode_then_decode_equals_the_full_call():
    config = _config()
    params = _random_params("t5_1_1_tiny")
    encoder, decoder = _batch()
    model = T5(config)

    @jax.jit
    def two_calls(p):
        encoded = model.apply({"params": p}, encoder, enable_dropout=False, method=T5.encode)
        return model.apply({"params": p}, encoded, encoder, decoder, enable_dropout=False, method=T5.decode)

    np.testing.assert_allclose(two_calls(params), _logits_fn(config)(params, encoder, decoder), atol=1e-5)


def test_dropout_is_active_only_when_enabled():
    config = _config(dropout_rate=0.3)
    params = _random_params("t5_1_1_tiny")
    encoder, decoder = _batch()
    model = T5(config)
    with_dropout = jax.jit(lambda rng: model.apply({"params": params}, encoder, decoder, enable_dropout=True,
                                                   rngs={"dropout": rng}))
    off = _logits_fn(config)(params, encoder, decoder)
    np.testing.assert_allclose(off, _logits_fn(_config())(params, encoder, decoder), atol=1e-5)
    # An "rbg" key: threefry dropout masks take about 3x longer to compile on CPU.
    on_1, on_2 = with_dropout(jax.random.key(1, impl="rbg")), with_dropout(jax.random.key(2, impl="rbg"))
    assert np.abs(on_1 - off).max() > 1e-3 and np.abs(on_1 - on_2).max() > 1e-3


def test_token_ids_must_be_integers():
    encoder, decoder = _batch()
    with pytest.raises(TypeError, match="integers"):
        T5(_config()).apply({"params": _random_params("t5_1_1_tiny")}, encoder.astype(np.float32), decoder,
                            enable_dropout=False)
