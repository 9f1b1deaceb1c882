"""`initial_params.load_initial_params`: every kind of source, offline (T5X's format: test_t5x_checkpoint.py)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import dss_jax
from dss_jax import checkpoints, hf_checkpoint, initial_params
from dss_jax.model import abstract_params, init_params

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB_ID = "google/t5-v1_1-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def config():
    return dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0)


@pytest.fixture(scope="module")
def params(config):
    return jax.tree_util.tree_map(np.asarray, init_params(config, rng=5))


@pytest.fixture(scope="module")
def hf_dir(config, params, tmp_path_factory):
    return hf_checkpoint.export_hf_checkpoint(config, params, tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture(scope="module")
def hub_cache(hf_dir, tmp_path_factory):
    """A Hugging Face hub cache holding HUB_ID at COMMIT, in the hub's own layout."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ("config.json", "model.safetensors"):
        blob = repo / "blobs" / f"blob-{name}"
        blob.write_bytes((hf_dir / name).read_bytes())
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def _assert_equal_trees(got, want):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_random_means_no_params(config):
    assert initial_params.load_initial_params("random", abstract_params(config), config) is None


def test_hf_directory_gives_its_params(config, params, hf_dir):
    loaded = initial_params.load_initial_params(str(hf_dir), abstract_params(config), config)
    _assert_equal_trees(loaded, params)


def test_hf_directory_fills_a_scanned_model(config, params, hf_dir):
    from dss_jax.model import stack_layers

    scanned = config.replace(scan_layers=True)
    loaded = initial_params.load_initial_params(str(hf_dir), abstract_params(scanned), scanned)
    _assert_equal_trees(loaded, stack_layers(params, config))


def test_params_are_placed_on_the_models_shardings(config, params, hf_dir):
    from dss_jax import partitioning
    from dss_jax.model import T5

    mesh = partitioning.make_mesh()
    shardings = partitioning.param_shardings(T5(config), mesh, partitioning.logical_axis_rules())
    loaded = initial_params.load_initial_params(str(hf_dir), partitioning.with_sharding(abstract_params(config),
                                                                                         shardings), config)
    for leaf, sharding in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(shardings)):
        assert leaf.sharding == sharding
    _assert_equal_trees(loaded, params)


def test_params_take_the_models_dtype(config, hf_dir):
    bf16 = config.replace(param_dtype="bfloat16")
    loaded = initial_params.load_initial_params(str(hf_dir), abstract_params(bf16), bf16)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(loaded)} == {np.dtype("bfloat16")}


def test_hf_checkpoint_of_another_architecture_is_refused_by_field(config, hf_dir):
    relu = dss_jax.get_config("t5_1_0_tiny", dropout_rate=0.0)
    with pytest.raises(initial_params.InitialCheckpointError, match="mlp_activation: checkpoint 'gated-gelu'"):
        initial_params.load_initial_params(str(hf_dir), abstract_params(relu), relu)


def test_hub_model_id_is_read_from_the_hub_cache(config, params, offline_hub):
    loaded = initial_params.load_initial_params(HUB_ID, abstract_params(config), config)
    _assert_equal_trees(loaded, params)


def test_hub_model_id_absent_offline_names_it_and_the_ways_out(config, offline_hub):
    with pytest.raises(initial_params.InitialCheckpointError) as error:
        initial_params.load_initial_params("google/t5-v1_1-absent", abstract_params(config), config)
    message = str(error.value)
    assert "google/t5-v1_1-absent" in message and "HF_HUB_OFFLINE" in message
    assert "local directory" in message and "INITIAL_CHECKPOINT='random'" in message


def test_hub_model_without_safetensors_and_without_torch_says_what_to_install(config, offline_hub, monkeypatch):
    repo = offline_hub / "models--google--t5-v1_1-torchonly"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(initial_params, "_torch_available", lambda: False)
    with pytest.raises(initial_params.InitialCheckpointError, match=r"no safetensors weights.*pip install torch"):
        initial_params.load_initial_params("google/t5-v1_1-torchonly", abstract_params(config), config)


def test_missing_local_directory_names_it_and_the_ways_out(config, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(initial_params.InitialCheckpointError,
                       match=r"no_such_checkpoint.*does not exist.*local directory.*INITIAL_CHECKPOINT='random'"):
        initial_params.load_initial_params(str(missing), abstract_params(config), config)


def test_unrecognised_directory_is_refused(config, tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(initial_params.InitialCheckpointError, match="neither a Hugging Face"):
        initial_params.load_initial_params(str(tmp_path), abstract_params(config), config)


def test_dss_run_directory_gives_its_latest_params(config, params, tmp_path):
    run = tmp_path / "run"
    manager = checkpoints.CheckpointManager(run / "checkpoints", save_every=1, async_save=False)
    older = jax.tree_util.tree_map(np.zeros_like, params)
    manager.save(1, {"params": older, "step": 1}, {"batches": 1})
    manager.save(2, {"params": params, "step": 2}, {"batches": 2})
    manager.close()
    for source in (run, run / "checkpoints", run / "checkpoints" / "2"):
        loaded = initial_params.load_initial_params(str(source), abstract_params(config), config)
        _assert_equal_trees(loaded, params)


def test_hub_offline_environment_variable_is_honoured(config, params, hub_cache, tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE set in the environment, as a user would."""
    script = (
        "import json, sys, jax, numpy as np, dss_jax\n"
        "from dss_jax import initial_params\n"
        "from dss_jax.model import abstract_params\n"
        "c = dss_jax.get_config('t5_1_1_tiny', dropout_rate=0.0)\n"
        f"p = initial_params.load_initial_params({HUB_ID!r}, abstract_params(c), c)\n"
        "print(json.dumps(float(sum(np.asarray(x, np.float64).sum() for x in jax.tree_util.tree_leaves(p)))))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    want = float(sum(np.asarray(x, np.float64).sum() for x in jax.tree_util.tree_leaves(params)))
    assert json.loads(result.stdout.strip().splitlines()[-1]) == pytest.approx(want, rel=1e-12)
