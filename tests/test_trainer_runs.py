"""Whole training runs on a synthetic task: resume after SIGKILL, SIGTERM save, NaN stop, eval/infer.

Runs use the tiny T5 and the pre-tokenised tasks of ``trainer_support`` (imported by
the gin file; ``tests/`` is put on PYTHONPATH for subprocesses).
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import trainer_support as support
from dss_jax import checkpoints, metrics_logging, run_dir

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


_COMPILE_CACHE = {}


@pytest.fixture(scope="module", autouse=True)
def _shared_compile_cache(tmp_path_factory):
    """One persistent XLA compilation cache for this module's subprocesses (they run the same programs)."""
    _COMPILE_CACHE["dir"] = str(tmp_path_factory.mktemp("jax_cache"))
    yield
    _COMPILE_CACHE.clear()


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO)]), JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    if "dir" in _COMPILE_CACHE:
        env.update(JAX_COMPILATION_CACHE_DIR=_COMPILE_CACHE["dir"], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _write_gin(tmp_path, name, **bindings) -> pathlib.Path:
    path = tmp_path / f"{name}.gin"
    path.write_text(support.tiny_run_gin(**bindings))
    return path


def _train_cmd(gin_file, model_dir):
    return [sys.executable, "-m", "dss_jax.train", f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'"]


def _final_params(model_dir, step):
    from dss_jax.model import abstract_params

    config = run_dir.RunDir(model_dir).read_experiment().model
    return checkpoints.restore_params(pathlib.Path(model_dir) / "checkpoints" / str(step), abstract_params(config))


def _wait_for(predicate, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.fixture
def gin_config():
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def _train_in_process(gin_text, model_dir):
    import gin

    from dss_jax import gin_utils
    from dss_jax.cli import train as train_cli

    gin.clear_config()
    try:
        gin_utils.parse_gin([], [])
        gin.parse_config(gin_text + f"MODEL_DIR = '{model_dir}'\n")
        return train_cli.train()
    finally:
        gin.clear_config()


RESUME_SETTINGS = {"TrainConfig.steps": 24, "CheckpointConfig.every": 4, "CheckpointConfig.keep": 2,
                   "TrainConfig.log_every": 4}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted in-process run of RESUME_SETTINGS: (model_dir, summary)."""
    model_dir = tmp_path_factory.mktemp("reference") / "run"
    return model_dir, _train_in_process(support.tiny_run_gin(**RESUME_SETTINGS), model_dir)


def test_sigkill_then_rerun_resumes_and_ends_with_the_uninterrupted_params(tmp_path, reference_run):
    gin_file = _write_gin(tmp_path, "resume", **RESUME_SETTINGS)
    killed_dir, (clean_dir, _) = tmp_path / "killed", reference_run
    proc = subprocess.Popen(_train_cmd(gin_file, killed_dir), env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        saved = _wait_for(lambda: checkpoints.latest_checkpoint_step(killed_dir / "checkpoints") is not None,
                          proc, timeout=400)
        assert saved, f"no checkpoint appeared before the run ended: {proc.communicate()[0][-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = checkpoints.latest_checkpoint_step(killed_dir / "checkpoints")
    assert killed_at is not None and killed_at < 24, "the kill must land before the end of training"

    rerun = subprocess.run(_train_cmd(gin_file, killed_dir), env=_env(), cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step" in rerun.stdout + rerun.stderr

    resumed, reference = _final_params(killed_dir, 24), _final_params(clean_dir, 24)
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    steps = [r["step"] for r in metrics_logging.read_metrics(killed_dir) if r["kind"] == "train"]
    assert max(steps) == 24


def test_sigterm_saves_a_checkpoint_with_the_data_position_and_exits_cleanly(tmp_path):
    gin_file = _write_gin(tmp_path, "term", **{"TrainConfig.steps": 100000, "CheckpointConfig.every": 1000,
                                                "TrainConfig.log_every": 10})
    model_dir = tmp_path / "term"
    proc = subprocess.Popen(_train_cmd(gin_file, model_dir), env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        logged = _wait_for(lambda: (model_dir / "metrics.jsonl").is_file()
                           and (model_dir / "metrics.jsonl").stat().st_size > 0, proc, timeout=400)
        assert logged, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "saved checkpoint at step" in output
    manager = checkpoints.CheckpointManager(model_dir / "checkpoints")
    step = manager.latest_step()
    assert step is not None and step >= 10
    assert step % 1000 != 0, "the save came from the signal, not from the save interval"
    assert manager.restore_data_position(step)["batches_consumed"] == step
    manager.close()


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, gin_config):
    # An absurd learning rate makes the params ~1e30 after step 1, so the loss of step 2 overflows.
    gin_text = support.tiny_run_gin(**{"TrainConfig.steps": 10, "OptimizerConfig.learning_rate": 1e30,
                                       "CheckpointConfig.every": 1, "TrainConfig.log_every": 5,
                                       "OptimizerConfig.clip": None})
    with pytest.raises(metrics_logging.NonFiniteLossError, match=r"loss is (nan|inf).*Last good checkpoint: step 1"):
        _train_in_process(gin_text, tmp_path / "nan")
    steps = checkpoints.CheckpointManager(tmp_path / "nan" / "checkpoints").all_steps()
    assert steps == [1]
    params = _final_params(tmp_path / "nan", 1)
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree_util.tree_leaves(params))


def test_eval_and_infer_entrypoints_read_a_trained_run(tmp_path, reference_run, gin_config):
    model_dir, summary = reference_run
    assert summary["step"] == 24 and "accuracy" in summary["eval"]["trainer_test_label"]
    records = metrics_logging.read_metrics(model_dir)
    assert {"loss", "loss_label", "loss_rationale", "learning_rate", "examples_per_sec"} <= set(records[0])
    assert any(r["kind"] == "eval" and "accuracy" in r for r in records)

    import gin

    from dss_jax.cli import evaluate as eval_cli
    from dss_jax.cli import infer as infer_cli

    gin.clear_config()
    (result,) = eval_cli.evaluate_checkpoint(model_dir=str(model_dir), split="validation")
    assert result["task"] == "trainer_test_label" and result["step"] == 24 and result["num_examples"] == support.NUM_EXAMPLES and "accuracy" in result

    out = tmp_path / "predictions.jsonl"
    n = infer_cli.infer(model_dir=str(model_dir), output=str(out), split="validation", rationales=True,
                        max_examples=5, rationale_max_decode_len=8)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == 5 and len(lines) == 5
    assert {"index", "target", "prediction", "rationale"} <= set(lines[0])
