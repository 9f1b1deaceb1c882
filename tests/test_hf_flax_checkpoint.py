"""Hugging Face Flax checkpoints (`flax_model.msgpack`, what the google/t5-v1_1-* hub repos
publish besides PyTorch) read by `dss_jax.load_hf_checkpoint` and fetched by hub id.

The checkpoints are built here from a random transformers PyTorch T5 by this file's own
conversion, written from transformers' rules rather than with dss_jax's code:

- `modeling_flax_pytorch_utils.rename_key_and_reshape_tensor`: a Linear `weight` becomes
  the Dense `kernel`, transposed; an Embedding `weight` becomes `embedding`; a `weight`
  whose name the Flax model already has (T5's layer norm, `FlaxT5LayerNorm.weight`) stays.
- `models/t5/modeling_flax_t5.py`: module names are the PyTorch ones
  (`encoder/block/{i}/layer/{j}/SelfAttention/q`, `.../EncDecAttention/...`,
  `.../DenseReluDense/wi_0`, `encoder/final_layer_norm`, `shared`, `lm_head`); the stacks
  use `shared` for their token embeddings (no `embed_tokens` copy), and a tied model has no
  `lm_head` parameter (its logits use `shared.embedding.T`).
- `FlaxPreTrainedModel.from_pretrained` takes a state nested under `base_model_prefix`
  (`transformer` for T5) off; a `{"params": ...}` variables dict is the other wrapping seen.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from flax import serialization, traverse_util  # noqa: E402

import dss_jax  # noqa: E402
from dss_jax import hardware, hf_checkpoint  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 128
LOGITS_TOLERANCE_FLOAT32 = 1e-4
HUB_ID = "google/t5-v1_1-flaxonly"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
# config.json as the hub's T5 checkpoints have it (transformers 4): T5 1.1 says
# tie_word_embeddings false; T5 1.0 omits it (tied, decoder outputs scaled).
SIZES = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
             dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
             relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
HUB_CONFIGS = {
    "t5_1_1": dict(SIZES, model_type="t5", architectures=["T5ForConditionalGeneration"],
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5_1_0": dict(SIZES, model_type="t5", architectures=["T5ForConditionalGeneration"], feed_forward_proj="relu"),
}


def _build_torch_model(style):
    """A random transformers T5 in the true T5 1.1 (own lm_head) or T5 1.0 (tied) form."""
    gated = style == "t5_1_1"
    torch.manual_seed(2 if gated else 3)
    fields = {k: v for k, v in HUB_CONFIGS[style].items() if k not in ("model_type", "architectures")}
    config = transformers.T5Config(**{**fields, "tie_word_embeddings": not gated},
                                   initializer_factor=1.0 if gated else 1.5)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.shared.weight.normal_(0.0, 1.0)
        if gated:  # transformers 5 ties lm_head when building from a config (docs PITFALLS.md)
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model


def _flax_state_from_torch(model, tied, dtype=np.float32):
    """The nested Flax parameter dict FlaxT5ForConditionalGeneration has for `model`."""
    flat = {}
    for name, tensor in model.state_dict().items():
        if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue  # the stacks use `shared`
        if tied and name == "lm_head.weight":
            continue
        key = tuple(name.split("."))
        value = tensor.detach().numpy()
        if key[-1] == "weight" and (key[0] == "shared" or key[-2] == "relative_attention_bias"):
            key, value = key[:-1] + ("embedding",), value
        elif key[-1] == "weight" and value.ndim == 2:
            key, value = key[:-1] + ("kernel",), value.T
        flat[key] = np.ascontiguousarray(value).astype(dtype)
    return traverse_util.unflatten_dict(flat)


def _write_flax_checkpoint(directory, style, state):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(HUB_CONFIGS[style]))
    (directory / hf_checkpoint.FLAX_NAME).write_bytes(serialization.msgpack_serialize(state))
    return directory


def _flax_checkpoint(style, tmp_path_factory):
    """(style, directory with config.json + flax_model.msgpack, torch model, Flax state)."""
    model = _build_torch_model(style)
    state = _flax_state_from_torch(model, tied=style == "t5_1_0")
    return style, _write_flax_checkpoint(tmp_path_factory.mktemp(style) / "model", style, state), model, state


@pytest.fixture(scope="module", params=["t5_1_1", "t5_1_0"])
def flax_checkpoint(request, tmp_path_factory):
    return _flax_checkpoint(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def t5_1_1_flax_checkpoint(tmp_path_factory):
    return _flax_checkpoint("t5_1_1", tmp_path_factory)


def _batch():
    rng = np.random.RandomState(0)
    encoder = rng.randint(2, VOCAB, size=(2, 16))
    encoder[1, 9:] = 0
    decoder = rng.randint(2, VOCAB, size=(2, 8))
    decoder[:, 0] = 0
    return encoder, decoder


def _assert_equal_trees(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_flax_msgpack_checkpoint_gives_the_torch_models_float32_logits(flax_checkpoint):
    style, directory, model, _ = flax_checkpoint
    assert sorted(os.listdir(directory)) == ["config.json", "flax_model.msgpack"]
    encoder, decoder = _batch()
    with torch.no_grad():
        reference = model(input_ids=torch.tensor(encoder), attention_mask=torch.tensor(encoder != 0).long(),
                          decoder_input_ids=torch.tensor(decoder)).logits.numpy()
    config, params = dss_jax.load_hf_checkpoint(directory)
    assert config.tie_word_embeddings == (style == "t5_1_0")
    config = hardware.resolve(config)
    ours = np.asarray(dss_jax.T5(config).apply({"params": params}, encoder, decoder, enable_dropout=False))
    assert np.abs(ours - reference).max() < LOGITS_TOLERANCE_FLOAT32


@pytest.mark.parametrize("wrapping", ["params", "transformer"])
def test_wrapped_flax_state_gives_the_same_params(flax_checkpoint, tmp_path, wrapping):
    style, directory, _, state = flax_checkpoint
    wrapped = _write_flax_checkpoint(tmp_path / wrapping, style, {wrapping: state})
    _assert_equal_trees(dss_jax.load_hf_checkpoint(wrapped)[1], dss_jax.load_hf_checkpoint(directory)[1])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_flax_arrays_are_read_as_float32(flax_checkpoint, tmp_path, dtype):
    style, _, model, _ = flax_checkpoint
    half = np.dtype(jax.numpy.dtype(dtype))
    state = _flax_state_from_torch(model, tied=style == "t5_1_0", dtype=half)
    directory = _write_flax_checkpoint(tmp_path / dtype, style, state)
    rounded = _write_flax_checkpoint(tmp_path / "rounded", style,
                                     jax.tree_util.tree_map(lambda x: x.astype(np.float32), state))
    _, params = dss_jax.load_hf_checkpoint(directory)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {np.dtype(np.float32)}
    _assert_equal_trees(params, dss_jax.load_hf_checkpoint(rounded)[1])


def test_safetensors_is_preferred_to_flax_and_flax_to_pytorch(flax_checkpoint, tmp_path):
    style, directory, model, state = flax_checkpoint
    config, params = dss_jax.load_hf_checkpoint(directory)
    other = _write_flax_checkpoint(tmp_path / "both", style, jax.tree_util.tree_map(np.zeros_like, state))
    hf_checkpoint.export_hf_checkpoint(config, params, tmp_path / "export")
    (other / hf_checkpoint.SAFETENSORS_NAME).write_bytes((tmp_path / "export" / hf_checkpoint.SAFETENSORS_NAME)
                                                         .read_bytes())
    _assert_equal_trees(dss_jax.load_hf_checkpoint(other)[1], params)
    (other / hf_checkpoint.SAFETENSORS_NAME).unlink()
    (other / hf_checkpoint.FLAX_NAME).write_bytes((directory / hf_checkpoint.FLAX_NAME).read_bytes())
    torch.save({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, other / hf_checkpoint.PYTORCH_NAME)
    _assert_equal_trees(dss_jax.load_hf_checkpoint(other)[1], params)


def test_unknown_flax_parameter_is_named_as_unexpected(flax_checkpoint, tmp_path):
    style, _, _, state = flax_checkpoint
    extra = {**state, "encoder": {**state["encoder"], "extra_norm": {"weight": np.ones(32, np.float32)}}}
    with pytest.raises(hf_checkpoint.CheckpointMismatchError,
                       match=r"unexpected tensors \(1\): encoder\.extra_norm\.weight"):
        dss_jax.load_hf_checkpoint(_write_flax_checkpoint(tmp_path / "extra", style, extra))


def test_hub_id_with_only_flax_weights_loads_offline_without_torch(t5_1_1_flax_checkpoint, tmp_path):
    """A hub cache holding config.json + flax_model.msgpack, read with HF_HUB_OFFLINE=1 in a
    process where `import torch` fails."""
    _, directory, _, _ = t5_1_1_flax_checkpoint
    repo = tmp_path / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ("config.json", hf_checkpoint.FLAX_NAME):
        blob = repo / "blobs" / f"blob-{name}"
        blob.write_bytes((directory / name).read_bytes())
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    script = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # any import of torch now raises ImportError\n"
        "import jax, numpy as np\n"
        "from dss_jax import hf_checkpoint, initial_params\n"
        "from dss_jax.model import abstract_params\n"
        f"kind, location = initial_params.resolve_source({HUB_ID!r})\n"
        "config, _ = hf_checkpoint.load_hf_checkpoint(location)\n"
        f"p = initial_params.load_initial_params({HUB_ID!r}, abstract_params(config), config)\n"
        "print(json.dumps([kind, sorted(__import__('os').listdir(location)),\n"
        "                  float(sum(np.asarray(x, np.float64).sum() for x in jax.tree_util.tree_leaves(p)))]))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    kind, names, total = json.loads(result.stdout.strip().splitlines()[-1])
    _, params = dss_jax.load_hf_checkpoint(directory)
    want = float(sum(np.asarray(x, np.float64).sum() for x in jax.tree_util.tree_leaves(params)))
    assert (kind, names) == ("hf", ["config.json", "flax_model.msgpack"])
    assert total == pytest.approx(want, rel=1e-12)


def test_sharded_flax_checkpoint_gives_the_same_params(flax_checkpoint, tmp_path):
    """Shards as FlaxPreTrainedModel.save_pretrained writes them: nested dicts, listed in
    flax_model.msgpack.index.json under their "/"-joined names."""
    style, directory, _, state = flax_checkpoint
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((directory / "config.json").read_text())
    weight_map = {}
    for number, part in enumerate(sorted(state), start=1):  # one shard per top-level module
        shard = f"flax_model-{number:05d}-of-{len(state):05d}.msgpack"
        (sharded / shard).write_bytes(serialization.msgpack_serialize({part: state[part]}))
        weight_map.update({"/".join(key): shard for key in traverse_util.flatten_dict({part: state[part]})})
    (sharded / hf_checkpoint.FLAX_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _assert_equal_trees(dss_jax.load_hf_checkpoint(sharded)[1], dss_jax.load_hf_checkpoint(directory)[1])
