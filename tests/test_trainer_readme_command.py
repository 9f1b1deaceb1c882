"""The README's main command, shortened: the embedded `arith` benchmark end to end on CPU."""
import json
import os
import pathlib
import subprocess
import sys

from dss_jax import metrics_logging

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    env.pop("DSS_VOCAB", None)
    return env


def test_short_arith_run_trains_evaluates_and_writes_metrics(tmp_path):
    model_dir = tmp_path / "arith"
    train = subprocess.run(
        [sys.executable, "-m", "dss_jax.train", "--gin_file=dss_arith_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'",
         "--gin.TrainConfig.steps=12", "--gin.EvalConfig.every=6", "--gin.InputConfig.batch_size=8",
         "--gin.TrainConfig.log_every=3", "--gin.EvalConfig.max_examples=24", "--gin.CheckpointConfig.every=6",
         "--gin.TrainConfig.progress_bar=False"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-4000:]
    assert "accuracy after 12 steps" in train.stdout and "dss_arith_label_gold" in train.stdout

    records = metrics_logging.read_metrics(model_dir)
    train_records = [r for r in records if r["kind"] == "train"]
    eval_records = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_records] == [3, 6, 9, 12]
    assert all(r["loss_label"] > 0 and r["loss_rationale"] > 0 for r in train_records)
    assert [(r["step"], r["split"]) for r in eval_records] == [(6, "validation"), (12, "test")]
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["num_examples"] == 24 for r in eval_records)  # percent
    assert any((model_dir / "tensorboard").iterdir())

    evaluate = subprocess.run(
        [sys.executable, "-m", "dss_jax.eval", "--gin_file=runs/eval.gin", f"--gin.MODEL_DIR='{model_dir}'",
         "--gin.evaluate_checkpoint.max_examples=24"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-4000:]
    result = json.loads(evaluate.stdout.strip().splitlines()[-1])
    final_test = eval_records[-1]
    assert result["step"] == 12 and result["task"] == "dss_arith_label_gold"
    assert result["accuracy"] == final_test["accuracy"]  # same checkpoint, same examples, same decoding
