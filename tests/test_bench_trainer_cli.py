"""The benchmark's trainer-CLI mode (bench/trainer_cli_protocol.py): ``python -m dss_jax.train``
on the protocol's work trains on exactly the protocol script's packed steps, and its step
times are read from the run's metrics.jsonl."""
import itertools
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench_modules(shared_dir, dss_data_dir, monkeypatch):
    monkeypatch.setenv("DSS_SHARED_DIR", str(shared_dir))
    monkeypatch.setenv("DSS_DATA_DIR", str(dss_data_dir))
    monkeypatch.syspath_prepend(str(BENCH))
    import dss_jax_protocol
    import protocol_tasks
    import trainer_cli_protocol

    return types.SimpleNamespace(script=dss_jax_protocol, tasks=protocol_tasks, cli=trainer_cli_protocol)


@pytest.fixture
def clean_gin():
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def test_the_trainers_bucketed_steps_are_the_protocol_scripts_packed_steps(bench_modules, shared_dir, dss_data_dir):
    from dss_jax import input_pipeline

    script = bench_modules.script
    examples = script.load_examples(dss_data_dir, 48)
    tokenizer = script.Tokenizer(shared_dir / "bench" / "spm8k.model")
    args = types.SimpleNamespace(warmup=0, steps=6, batch_size=8, max_len=128, no_pack=False,
                                 encoder_row_lens=list(bench_modules.cli.ENCODER_ROW_LENS),
                                 decoder_row_lens=list(bench_modules.cli.DECODER_ROW_LENS))
    expected, _ = script.step_batches(examples, tokenizer, args)
    stream = input_pipeline.StreamConfig(bench_modules.tasks.PAIRED_TASK, {"inputs": 128, "targets": 128},
                                         batch_size=8, shuffle=False, pack="buckets",
                                         encoder_row_lens=bench_modules.cli.ENCODER_ROW_LENS,
                                         decoder_row_lens=bench_modules.cli.DECODER_ROW_LENS)
    got = list(itertools.islice(input_pipeline.train_batches(stream)[0], 6))
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for name in want:
            np.testing.assert_array_equal(want[name], have[name])


def test_the_bindings_build_the_protocols_experiment(bench_modules, clean_gin):
    from dss_jax.cli import plan

    bindings = [b[len("--gin."):].replace("=", " = ", 1) for b in bench_modules.cli.gin_bindings(
        "train_bf16", steps=45, batch_size=8, max_len=128, config="t5_1_1_small", vocab_size=None)]
    experiment, run = plan.configs_from_gin(["dss_cqa_small.gin"], [plan.UNUSED_MODEL_DIR, *bindings])
    assert experiment.task == bench_modules.tasks.PAIRED_TASK and experiment.random_init
    assert experiment.input.pack == "buckets" and experiment.input.shuffle is False
    assert experiment.input.sequence_lengths == {"inputs": 128, "targets": 128} and experiment.input.batch_size == 8
    assert (experiment.model.dtype, experiment.model.dropout_rate, experiment.model.vocab_size) == \
        ("bfloat16", 0.0, 32128)
    assert experiment.optimizer.clip is None and experiment.optimizer.schedule == "constant"
    assert experiment.loss_config().mode == "paired" and experiment.loss_config().alpha == 0.5
    assert (run.train.steps, run.train.log_every) == (45, 1)


def test_step_times_are_one_over_each_logged_steps_rate(bench_modules, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "train", "step": 2, "steps_per_sec": 4.0}, {"kind": "eval", "step": 2, "accuracy": 1.0},
        {"kind": "train", "step": 1, "steps_per_sec": 0.5}]) + "\n")
    assert bench_modules.cli.step_times(path) == [2.0, 0.25]


def test_the_trainer_cli_mode_runs_end_to_end_with_a_tiny_model(shared_dir, dss_data_dir):
    env = dict(os.environ, DSS_SHARED_DIR=str(shared_dir), DSS_DATA_DIR=str(dss_data_dir), DSS_BENCH_EXAMPLES="24",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(BENCH / "trainer_cli_protocol.py"), "--mode", "train", "--config",
                           "t5_1_1_tiny", "--vocab_size", "8000", "--steps", "2", "--warmup", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["timed_step_s"]) == 2 and len(result["warmup_step_s"]) == 1
    assert result["median_s_per_step"] > 0 and result["examples_per_s"] == pytest.approx(8 / result["median_s_per_step"])
    assert "dss_jax.train" in result["command"]
