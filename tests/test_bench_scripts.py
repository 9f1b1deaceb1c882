"""Smoke runs of the benchmark scripts on a tiny model: they run end to end and print one
JSON result line with the figures the harness reads (bench/dss_jax_protocol.py on the
protocol's data, bench/gpu_protocol.py's CPU smoke configuration)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


def _run(args, env_extra=None, timeout=600):
    env = dict(os.environ, **(env_extra or {}))
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_protocol_script_trains_packed_steps_and_decodes_with_a_tiny_model(shared_dir, dss_data_dir):
    common = ["--config", "t5_1_1_tiny", "--vocab_size", "8000", "--data_dir", dss_data_dir,
              "--spm", shared_dir / "bench" / "spm8k.model", "--n_examples", "32"]
    env = {"DSS_SHARED_DIR": str(shared_dir)}
    train = _run([BENCH / "dss_jax_protocol.py", "--mode", "train_bf16", "--steps", "2", "--warmup", "1",
                  *common], env)
    assert train["packing"] and not train["logits_dot_in_fp32"]
    assert len(train["timed_step_s"]) == 2 and train["median_s_per_step"] > 0
    assert 0 <= train["pad_fraction"] < 0.5 and train["real_tokens_per_step_mean"] > 0
    decode = _run([BENCH / "dss_jax_protocol.py", "--mode", "decode", "--decode_n", "16", "--decode_repeats", "1",
                   *common], env)
    assert decode["logits_dot_in_fp32"]
    assert decode["decode_label"]["sequences_per_s"] > 0 and decode["decode_rationale"]["max_new_tokens"] == 128


def test_gpu_script_smoke_configuration_runs_on_cpu():
    result = _run([BENCH / "gpu_protocol.py", "--config", "t5_1_1_tiny", "--rows", "8", "--steps", "2",
                   "--warmup", "1", "--matmul_n", "256"])
    assert result["median_s_per_step"] > 0 and result["mfu_vs_measured_matmul"] > 0, result
    assert result["mfu_vs_vendor_peak"] is None  # a CPU is not in the vendor table
