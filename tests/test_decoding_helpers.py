"""The pieces `dss_jax.decoding` builds greedy decoding from: `first_argmax` and the
explicit `DecodeWeights` a caller prepares once per parameter set (kernels cast once,
per-step kernel copies)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dss_jax
import dss_jax.model as model_module
from dss_jax import decoding
from dss_jax.model import T5
from model_support import program_config, random_params, tiny_config

MAX_LEN = 6
_first_argmax = jax.jit(decoding.first_argmax)


def _assert_same_as_argmax(logits):
    logits = np.asarray(logits, np.float32)
    np.testing.assert_array_equal(_first_argmax(logits), np.asarray(jnp.argmax(logits, axis=-1)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([-np.inf, -2.0, -0.5, 0.0, 0.5, 3.0, np.inf, np.nan]),
                         min_size=5, max_size=5), min_size=1, max_size=4))
def test_first_argmax_picks_what_argmax_picks_among_ties_infinities_and_nans(rows):
    _assert_same_as_argmax(np.array(rows))


def test_first_argmax_on_random_vocabulary_sized_logits():
    _assert_same_as_argmax(np.random.RandomState(0).standard_normal((16, 32128)))


def test_first_argmax_along_the_leading_axis_of_vocabulary_by_batch_logits():
    logits = np.random.RandomState(1).standard_normal((300, 4)).astype(np.float32)
    logits[[5, 9], 2] = 50.0  # a tie: the first wins
    found = jax.jit(lambda x: decoding.first_argmax(x, axis=0))(logits)
    np.testing.assert_array_equal(found, np.argmax(logits, axis=0))
    assert found[2] == 5


def test_first_argmax_returns_int32():
    assert _first_argmax(np.zeros((2, 3), np.float32)).dtype == jnp.int32


def _jax_params():
    return jax.tree_util.tree_map(jnp.asarray, random_params("t5_1_1_tiny"))


def _prepared(**overrides):
    return tiny_config(**overrides).replace(decode_kernels="prepared")


def test_prepared_decode_weights_hold_only_the_decoders_transposed_step_kernels():
    config = _prepared(dtype="bfloat16")
    params = _jax_params()
    weights = decoding.prepare_decode_weights(config, params)
    steps = weights.step_kernels
    paths = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(steps)}
    assert paths and all(path.endswith("['kernel_transposed']") for path in paths)
    assert all(path.startswith("['decoder']") for path in paths)
    logits = steps["decoder"]["logits_dense"]["kernel_transposed"]
    np.testing.assert_array_equal(logits, params["decoder"]["logits_dense"]["kernel"].T)
    wo = steps["decoder"]["layers_0"]["mlp"]["wo"]["kernel_transposed"]
    assert wo.dtype == jnp.bfloat16
    np.testing.assert_array_equal(wo, params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"].T.astype(jnp.bfloat16))


def test_in_bfloat16_prepared_weights_hold_the_kernels_cast_once_and_the_rest_as_stored():
    params = _jax_params()
    cast = decoding.prepare_decode_weights(_prepared(dtype="bfloat16"), params).params
    assert cast["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].dtype == jnp.bfloat16
    assert cast["decoder"]["layers_1"]["encoder_decoder_attention"]["key"]["kernel"].dtype == jnp.bfloat16
    assert cast["decoder"]["logits_dense"]["kernel"].dtype == jnp.float32  # the float32 output layer
    assert cast["token_embedder"]["embedding"].dtype == jnp.float32
    assert cast["encoder"]["encoder_norm"]["scale"].dtype == jnp.float32


def test_a_bfloat16_output_layer_gets_its_kernel_cast_once_too():
    params = _jax_params()
    weights = decoding.prepare_decode_weights(_prepared(dtype="bfloat16", logits_dot_in_fp32=False), params)
    assert weights.params["decoder"]["logits_dense"]["kernel"].dtype == jnp.bfloat16
    assert weights.step_kernels["decoder"]["logits_dense"]["kernel_transposed"].dtype == jnp.bfloat16


def test_in_float32_prepared_weights_use_the_parameters_as_passed():
    params = _jax_params()
    assert decoding.prepare_decode_weights(_prepared(), params).params is params


def test_stored_decode_weights_are_the_parameters_alone():
    params = _jax_params()
    weights = decoding.prepare_decode_weights(tiny_config(dtype="bfloat16").replace(decode_kernels="stored"), params)
    assert weights.params is params and weights.step_kernels == {}


@pytest.mark.parametrize("logits_dot_in_fp32", [True, False])
def test_kernels_cast_to_the_compute_dtype_give_bitwise_the_same_bfloat16_forward(logits_dot_in_fp32):
    config = tiny_config(dtype="bfloat16", logits_dot_in_fp32=logits_dot_in_fp32)
    params = _jax_params()
    rng = np.random.RandomState(3)
    encoder = rng.randint(2, 128, size=(2, 9)).astype(np.int32)
    decoder = rng.randint(2, 128, size=(2, 5)).astype(np.int32)
    forward = jax.jit(lambda p: T5(config).apply({"params": p}, encoder, decoder, enable_dropout=False))
    cast = model_module.kernels_in_compute_dtype(params, config)
    np.testing.assert_array_equal(forward(cast), forward(params))


def _tokens():
    return np.random.RandomState(0).randint(2, 128, size=(2, 7)).astype(np.int32)


def test_decoding_with_weights_prepared_once_equals_greedy_decode():
    config = tiny_config(dtype="bfloat16")
    params = _jax_params()
    weights = decoding.prepare_decode_weights(config, params)
    once = decoding.greedy_decode_with_weights(config, weights, _tokens(), MAX_LEN)
    np.testing.assert_array_equal(once, dss_jax.greedy_decode(T5(config), params, _tokens(), MAX_LEN))


def test_greedy_decode_takes_numpy_parameters():
    config = tiny_config()
    from_numpy = dss_jax.greedy_decode(T5(config), random_params("t5_1_1_tiny"), _tokens(), MAX_LEN)
    np.testing.assert_array_equal(from_numpy, dss_jax.greedy_decode(T5(config), _jax_params(), _tokens(), MAX_LEN))


@pytest.mark.parametrize("program", ["accelerator", "cpu", "cpu_fp32"])
def test_prepared_and_stored_decode_kernels_decode_the_same_tokens(program):
    config = program_config(dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0), program)
    params = _jax_params()
    tokens = {kind: dss_jax.greedy_decode(T5(config.replace(decode_kernels=kind)), params, _tokens(), MAX_LEN)
              for kind in ("prepared", "stored")}
    np.testing.assert_array_equal(tokens["prepared"], tokens["stored"])


def test_decode_weights_of_an_unresolved_config_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"hardware\.resolve"):
        decoding.prepare_decode_weights(dss_jax.get_config("t5_1_1_tiny"), _jax_params())
