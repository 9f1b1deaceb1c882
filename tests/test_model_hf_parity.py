"""dss_jax's T5 against transformers' T5ForConditionalGeneration (random weights, CPU), in
each program a config resolves to (`model_support.PROGRAMS`): the accelerators' plain
einsums and one CPU device's `cpu_matmul` programs (all of them run on this CPU).

Checkpoints are built here with transformers from tiny configs (asymmetric 2+3 layers so
that a mix-up of encoder and decoder tensors shows), saved with `save_pretrained`, and
loaded with `dss_jax.load_hf_checkpoint`.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import dss_jax  # noqa: E402
from dss_jax import hf_checkpoint  # noqa: E402
from dss_jax.model import relative_position_bucket  # noqa: E402
from model_support import program_config  # noqa: E402

FLOAT32_PROGRAMS = ["accelerator", "cpu_fp32"]  # "cpu" runs float32 products as "cpu_fp32" does
ALL_PROGRAMS = ["accelerator", "cpu", "cpu_fp32"]

VOCAB = 128
LOGITS_TOLERANCE_FLOAT32 = 1e-4
# bfloat16 activations against the float32 reference: mean |error| over the logits' std.
# Measured on these models: 0.0075 (T5 1.1) and 0.027 (T5 1.0); transformers' own bfloat16
# model gives 0.008 and 0.030. Greedy choices agreed at every position.
BFLOAT16_MEAN_ERROR_OVER_LOGIT_STD = 0.05
BFLOAT16_MIN_ARGMAX_AGREEMENT = 0.9


def _build_hf_model(style: str, eos_boost: float = 0.0):
    """A random transformers T5 in the true T5 1.1 or T5 1.0 form."""
    gated = style == "t5_1_1"
    torch.manual_seed(0 if gated else 1)
    hf_config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
        feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated,
        dropout_rate=0.0, decoder_start_token_id=0,
        initializer_factor=1.0 if gated else 1.5)  # a tied random T5 echoes its input unless its layers
        # are larger; above 2 the float32 logits are ill-conditioned (HF's own float64 gap > 1e-4)
    model = transformers.T5ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
        model.shared.weight.normal_(0.0, 1.0)
        if gated:  # transformers 5 ties lm_head when building from a config; T5 1.1 has its own
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
            model.lm_head.weight[1] *= 1.0 + eos_boost  # makes some rows end early (EOS = 1)
    return model


@pytest.fixture(scope="module", params=["t5_1_1", "t5_1_0"])
def hf_checkpoint_dir(request, tmp_path_factory):
    model = _build_hf_model(request.param, eos_boost=2.0)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    return request.param, directory, model


def _padded_batch():
    rng = np.random.RandomState(0)
    encoder = rng.randint(2, VOCAB, size=(3, 24))
    encoder[0, 17:] = 0
    encoder[1, 6:] = 0
    decoder = rng.randint(2, VOCAB, size=(3, 12))
    decoder[:, 0] = 0
    target_is_real = np.ones_like(decoder, dtype=bool)
    target_is_real[1, 5:] = False  # a padded target row: only real positions are compared
    return encoder, decoder, target_is_real


def _hf_logits(model, encoder, decoder):
    with torch.no_grad():
        return model(input_ids=torch.tensor(encoder), attention_mask=torch.tensor(encoder != 0).long(),
                     decoder_input_ids=torch.tensor(decoder)).logits.numpy()


def _our_logits(directory, encoder, decoder, program, **overrides):
    config, params = dss_jax.load_hf_checkpoint(directory, **overrides)
    config = program_config(config, program)
    apply = jax.jit(lambda p: dss_jax.T5(config).apply({"params": p}, encoder, decoder, enable_dropout=False))
    return config, np.asarray(apply(params))


def test_loaded_config_follows_checkpoint_style(hf_checkpoint_dir):
    style, directory, _ = hf_checkpoint_dir
    config, _ = dss_jax.load_hf_checkpoint(directory)
    if style == "t5_1_1":
        assert (config.mlp_activation, config.tie_word_embeddings, config.scale_decoder_outputs) == (
            "gated-gelu", False, False)
    else:
        assert (config.mlp_activation, config.tie_word_embeddings, config.scale_decoder_outputs) == (
            "relu", True, True)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)


@pytest.mark.parametrize("program", FLOAT32_PROGRAMS)
@pytest.mark.parametrize("scan_layers", [False, True])
def test_float32_logits_match_transformers_at_real_target_positions(hf_checkpoint_dir, scan_layers, program):
    _, directory, model = hf_checkpoint_dir
    encoder, decoder, target_is_real = _padded_batch()
    reference = _hf_logits(model, encoder, decoder)
    _, ours = _our_logits(directory, encoder, decoder, program, scan_layers=scan_layers)
    assert np.abs(ours - reference)[target_is_real].max() < LOGITS_TOLERANCE_FLOAT32


@pytest.mark.parametrize("program", ALL_PROGRAMS)
def test_bfloat16_logits_stay_within_stated_tolerance(hf_checkpoint_dir, program):
    _, directory, model = hf_checkpoint_dir
    encoder, decoder, target_is_real = _padded_batch()
    reference = _hf_logits(model, encoder, decoder)[target_is_real]
    _, ours = _our_logits(directory, encoder, decoder, program, dtype="bfloat16")
    ours = ours[target_is_real]
    assert np.abs(ours - reference).mean() / reference.std() < BFLOAT16_MEAN_ERROR_OVER_LOGIT_STD
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() >= BFLOAT16_MIN_ARGMAX_AGREEMENT


@pytest.mark.parametrize("program", FLOAT32_PROGRAMS)
def test_greedy_decoding_matches_transformers_generate(hf_checkpoint_dir, program):
    style, directory, model = hf_checkpoint_dir
    encoder, _, _ = _padded_batch()
    with torch.no_grad():
        generated = model.generate(input_ids=torch.tensor(encoder), attention_mask=torch.tensor(encoder != 0).long(),
                                   num_beams=1, do_sample=False, max_new_tokens=20,
                                   use_cache=False).numpy()  # HF's cache breaks with 2+3 layers
    expected = np.zeros((encoder.shape[0], 20), np.int32)
    expected[:, :generated.shape[1] - 1] = generated[:, 1:]  # drop the decoder start token
    config, params = dss_jax.load_hf_checkpoint(directory)
    config = program_config(config, program)
    ours = np.asarray(dss_jax.greedy_decode(dss_jax.T5(config), params, jnp.asarray(encoder), 20))
    assert len(set(expected.ravel())) >= 5 and (expected[:, 0] != 1).all(), "degenerate reference"
    np.testing.assert_array_equal(ours, expected)
    if style == "t5_1_1":  # the EOS boost makes a row stop early: the rest must be padding
        ended = [row for row in ours if 1 in row[:-1]]
        assert ended and all((row[list(row).index(1) + 1:] == 0).all() for row in ended)


def test_relative_position_buckets_match_transformers():
    relative = np.arange(-300, 301)[None, :]
    for bidirectional in (True, False):
        reference = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            torch.tensor(relative), bidirectional=bidirectional, num_buckets=32, max_distance=128).numpy()
        ours = relative_position_bucket(relative, bidirectional, 32, 128, xp=np)
        np.testing.assert_array_equal(ours, reference)
        np.testing.assert_array_equal(np.asarray(relative_position_bucket(jnp.asarray(relative), bidirectional,
                                                                          32, 128)), reference)


def test_export_then_transformers_reload_reproduces_weights(hf_checkpoint_dir, tmp_path):
    _, directory, model = hf_checkpoint_dir
    config, params = dss_jax.load_hf_checkpoint(directory, scan_layers=True)
    dss_jax.export_hf_checkpoint(config, params, tmp_path)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
    original = model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert reloaded.config.scale_decoder_outputs == model.config.scale_decoder_outputs


def test_export_then_load_round_trips_parameters(hf_checkpoint_dir, tmp_path):
    _, directory, _ = hf_checkpoint_dir
    config, params = dss_jax.load_hf_checkpoint(directory)
    dss_jax.export_hf_checkpoint(config, params, tmp_path)
    config_again, params_again = dss_jax.load_hf_checkpoint(tmp_path)
    assert config_again == config
    flat = hf_checkpoint.hf_tensors_from_params(config, params)
    flat_again = hf_checkpoint.hf_tensors_from_params(config, params_again)
    assert flat.keys() == flat_again.keys()
    for name in flat:
        np.testing.assert_array_equal(flat[name], flat_again[name])


def test_loader_reads_pytorch_bin(hf_checkpoint_dir, tmp_path):
    _, directory, model = hf_checkpoint_dir
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    _, params_bin = dss_jax.load_hf_checkpoint(tmp_path)
    _, params_safetensors = dss_jax.load_hf_checkpoint(directory)
    np.testing.assert_array_equal(params_bin["token_embedder"]["embedding"],
                                  params_safetensors["token_embedder"]["embedding"])


# ----------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def t5_1_1_tensors(tmp_path_factory):
    directory = tmp_path_factory.mktemp("t5_1_1_errors")
    _build_hf_model("t5_1_1").save_pretrained(directory)
    return json.loads((directory / "config.json").read_text()), hf_checkpoint.read_hf_tensors(directory)


def _write_checkpoint(directory, hf_config, tensors):
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def test_missing_tensor_is_reported_by_name(t5_1_1_tensors, tmp_path):
    hf_config, tensors = t5_1_1_tensors
    tensors = dict(tensors)
    del tensors["decoder.block.2.layer.1.EncDecAttention.k.weight"]
    with pytest.raises(hf_checkpoint.CheckpointMismatchError, match=r"missing.*decoder\.block\.2\.layer\.1"
                                                                   r"\.EncDecAttention\.k\.weight"):
        dss_jax.load_hf_checkpoint(_write_checkpoint(tmp_path, hf_config, tensors))


def test_unexpected_tensor_is_reported_by_name(t5_1_1_tensors, tmp_path):
    hf_config, tensors = t5_1_1_tensors
    tensors = {**tensors, "encoder.block.9.layer.0.layer_norm.weight": np.ones(32, np.float32)}
    with pytest.raises(hf_checkpoint.CheckpointMismatchError, match=r"unexpected.*encoder\.block\.9"):
        dss_jax.load_hf_checkpoint(_write_checkpoint(tmp_path, hf_config, tensors))


def test_unexpected_tensor_is_skipped_with_warning_when_not_strict(t5_1_1_tensors, tmp_path, caplog):
    hf_config, tensors = t5_1_1_tensors
    tensors = {**tensors, "encoder.block.9.layer.0.layer_norm.weight": np.ones(32, np.float32)}
    config, _ = dss_jax.load_hf_checkpoint(_write_checkpoint(tmp_path, hf_config, tensors), strict=False)
    assert config.num_encoder_layers == 2
    assert "encoder.block.9.layer.0.layer_norm.weight" in caplog.text


def test_shape_mismatch_names_tensor_and_both_shapes(t5_1_1_tensors, tmp_path):
    hf_config, tensors = t5_1_1_tensors
    tensors = {**tensors, "encoder.block.1.layer.1.DenseReluDense.wo.weight": np.zeros((32, 48), np.float32)}
    with pytest.raises(hf_checkpoint.CheckpointMismatchError,
                       match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight has shape \(32, 48\), "
                             r"expected \(32, 64\)"):
        dss_jax.load_hf_checkpoint(_write_checkpoint(tmp_path, hf_config, tensors))


def test_untied_config_without_lm_head_is_a_missing_tensor(t5_1_1_tensors, tmp_path):
    hf_config, tensors = t5_1_1_tensors
    tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    hf_config = {**hf_config, "tie_word_embeddings": False}
    with pytest.raises(hf_checkpoint.CheckpointMismatchError, match=r"missing.*lm_head\.weight"):
        dss_jax.load_hf_checkpoint(_write_checkpoint(tmp_path, hf_config, tensors))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        dss_jax.load_hf_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- config.json semantics

_TENSORS_WITH_LM_HEAD = {"shared.weight", "lm_head.weight"}


def test_transformers_4_t5_1_1_config_means_untied_and_unscaled():
    hf = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
    config = hf_checkpoint.config_from_hf_dict(hf, _TENSORS_WITH_LM_HEAD, lm_head_differs=True)
    assert (config.tie_word_embeddings, config.scale_decoder_outputs) == (False, False)


def test_t5_1_0_config_without_tying_keys_means_tied_and_scaled():
    hf = {"feed_forward_proj": "relu"}
    config = hf_checkpoint.config_from_hf_dict(hf, {"shared.weight"}, lm_head_differs=None)
    assert (config.tie_word_embeddings, config.scale_decoder_outputs) == (True, True)


def test_transformers_5_config_with_distinct_lm_head_means_untied():
    hf = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": True, "scale_decoder_outputs": False}
    config = hf_checkpoint.config_from_hf_dict(hf, _TENSORS_WITH_LM_HEAD, lm_head_differs=True)
    assert (config.tie_word_embeddings, config.scale_decoder_outputs) == (False, False)


def test_identical_lm_head_copy_keeps_the_model_tied():
    hf = {"feed_forward_proj": "relu", "tie_word_embeddings": True}
    config = hf_checkpoint.config_from_hf_dict(hf, _TENSORS_WITH_LM_HEAD, lm_head_differs=False)
    assert config.tie_word_embeddings


def test_unsupported_feed_forward_is_rejected():
    with pytest.raises(ValueError, match="gated-silu"):
        hf_checkpoint.config_from_hf_dict({"feed_forward_proj": "gated-silu"}, {"shared.weight"}, None)


def test_loader_reads_sharded_safetensors(t5_1_1_tensors, tmp_path):
    from safetensors.numpy import save_file

    hf_config, tensors = t5_1_1_tensors
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(tmp_path / shard), metadata={"format": "pt"})
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    config, params = dss_jax.load_hf_checkpoint(tmp_path)
    np.testing.assert_array_equal(hf_checkpoint.hf_tensors_from_params(config, params)["lm_head.weight"],
                                  tensors["lm_head.weight"])


def test_bfloat16_checkpoint_loads_as_float32_or_as_param_dtype(tmp_path):
    model = _build_hf_model("t5_1_0").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    expected = model.shared.weight.detach().float().numpy()
    _, params = dss_jax.load_hf_checkpoint(tmp_path)
    assert params["token_embedder"]["embedding"].dtype == np.float32
    np.testing.assert_array_equal(params["token_embedder"]["embedding"], expected)
    _, params_bf16 = dss_jax.load_hf_checkpoint(tmp_path, param_dtype="bfloat16")
    assert params_bf16["token_embedder"]["embedding"].dtype == jnp.bfloat16


def test_embedding_copies_equal_to_shared_weight_are_accepted(t5_1_1_tensors, tmp_path):
    hf_config, tensors = t5_1_1_tensors
    copies = {name: tensors["shared.weight"].copy() for name in hf_checkpoint.EMBEDDING_ALIASES}
    config, _ = dss_jax.load_hf_checkpoint(_write_checkpoint(tmp_path, hf_config, {**tensors, **copies}))
    assert not config.tie_word_embeddings


def test_embedding_copy_that_differs_from_shared_weight_is_an_error(t5_1_1_tensors, tmp_path):
    hf_config, tensors = t5_1_1_tensors
    tensors = {**tensors, "decoder.embed_tokens.weight": tensors["shared.weight"] + 1.0}
    with pytest.raises(hf_checkpoint.CheckpointMismatchError, match=r"decoder\.embed_tokens\.weight differs"):
        dss_jax.load_hf_checkpoint(_write_checkpoint(tmp_path, hf_config, tensors))


def test_non_t5_checkpoint_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart"}))
    with pytest.raises(ValueError, match="bart"):
        dss_jax.load_hf_checkpoint(tmp_path)
