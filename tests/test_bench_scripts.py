"""Smoke runs of the benchmark scripts on a tiny model: they run end to end and print one
JSON result line with the figures the harness reads (bench/dss_jax_protocol.py on the
protocol's data, bench/gpu_protocol.py with its `--tiny` flag)."""
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


def test_gpu_script_runs_end_to_end_on_cpu_with_its_tiny_flag():
    result = _run([BENCH / "gpu_protocol.py", "--tiny"])
    (train,), (decode,) = result["train"], result["decode"]
    assert train["config"] == "t5_1_1_tiny" and train["median_s_per_step"] > 0
    assert train["mfu_vs_measured_matmul"] > 0 and train["compiled_memory_bytes"] > 0
    assert train["mfu_vs_vendor_peak"] is None  # a CPU is not in the vendor table
    assert decode["new_tokens_per_s"] > 0 and decode["new_tokens"] == 16
    assert result["peak_memory"]["bytes"] > 0


def _gpu_protocol():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_protocol", BENCH / "gpu_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_picks_the_most_rows_whose_memory_fits_next_to_the_state():
    gpu = _gpu_protocol()
    probe = gpu.StepProgram(None, None, None, {}, 0.0, state_bytes=10 * 2**30, temp_bytes=8 * 2**30)  # 1 GiB a row
    assert gpu.pick_rows(probe, limit=100 * 2**30, max_rows=512) == 72  # (85 - 10) GiB, down to a multiple of 8
    assert gpu.pick_rows(probe, limit=100 * 2**30, max_rows=64) == 64
    assert gpu.pick_rows(probe, limit=12 * 2**30, max_rows=512) == gpu.PROBE_ROWS
