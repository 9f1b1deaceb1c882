"""A two-process training run end to end: train, checkpoint, SIGKILL both, restart both,
resume, finish, evaluate; and it ends with exactly the parameters and accuracy of one process.

Two ``python -m dss_jax.train`` processes join one JAX distributed system on 127.0.0.1
the way a SLURM job starts them (``JAX_COORDINATOR_ADDRESS`` plus ``SLURM_NTASKS`` /
``SLURM_PROCID``, read by ``jax.distributed.initialize()`` when the trainer gets
``MeshConfig.multihost=True``; gloo CPU collectives), one CPU device each, on a
``data=2`` mesh: data parallel across the processes.  The reference is ONE process with
two CPU devices and the same global batch (``pack="buckets"``: every host packs the same
global step and keeps its own rows), so both compile the same SPMD program and the
parameters must match bit for bit.  The tiny T5 trains on the synthetic tasks of
``trainer_support``; the subprocesses share one persistent compilation cache.
"""
import os
import pathlib
import signal
import socket
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
STEPS = 16
SETTINGS = {
    "TrainConfig.steps": STEPS, "CheckpointConfig.every": 8, "CheckpointConfig.keep": None,
    "TrainConfig.log_every": 4, "OptimizerConfig.learning_rate": 1e-2, "MeshConfig.shape": "(2, 1)",
    # a step's 8 sequences always fit 2 rows of 64 + 32 tokens: one shape to compile
    "InputConfig.pack": "'buckets'", "InputConfig.encoder_row_lens": "(64,)", "InputConfig.decoder_row_lens": "(32,)",
    "EvalConfig.batch_size": 8, "EvalConfig.max_decode_len": 4,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache_dir, **extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO)]), JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _host_env(cache_dir, port, process_id):
    """What srun gives task ``process_id`` of a 2-task job, plus the launcher's coordinator address."""
    return _env(cache_dir, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", SLURM_JOB_ID="4242",
                SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID=str(process_id),
                SLURM_LOCALID="0", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def _train_cmd(gin_file, model_dir, *extra):
    return [sys.executable, "-m", "dss_jax.train", f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'", *extra]


def _start(cmd, env, log_path):
    log = open(log_path, "a")
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)


def _wait_all(procs, timeout):
    deadline = time.time() + timeout
    for proc in procs:
        proc.wait(timeout=max(deadline - time.time(), 1))
    return [proc.returncode for proc in procs]


def _two_hosts(gin_file, model_dir, cache_dir, logs):
    port = free_port()
    return [_start(_train_cmd(gin_file, model_dir, "--gin.MeshConfig.multihost=True"),
                   _host_env(cache_dir, port, i), logs[i]) for i in range(2)]


def _kill(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=60)


def _final_params(model_dir):
    from dss_jax.model import abstract_params

    config = run_dir.RunDir(model_dir).read_experiment().model
    return checkpoints.restore_params(pathlib.Path(model_dir) / "checkpoints" / str(STEPS), abstract_params(config))


def _final_eval(model_dir):
    return [(r["task"], r["split"], r["num_examples"], r["accuracy"])
            for r in metrics_logging.eval_records(metrics_logging.read_metrics(model_dir)) if r["step"] == STEPS]


def _tail(path):
    return pathlib.Path(path).read_text()[-4000:]


def test_two_processes_killed_and_restarted_end_with_the_one_process_params_and_accuracy(tmp_path):
    cache = tmp_path / "jax_cache"
    gin_file = tmp_path / "multihost.gin"
    gin_file.write_text(support.tiny_run_gin(**SETTINGS))
    one_dir, two_dir = tmp_path / "one_process", tmp_path / "two_processes"
    logs = [tmp_path / f"host{i}.log" for i in range(2)]

    # the reference (one process, two devices) runs while the two hosts train
    reference = _start(_train_cmd(gin_file, one_dir),
                       _env(cache, XLA_FLAGS="--xla_force_host_platform_device_count=2"), tmp_path / "one.log")
    hosts = _two_hosts(gin_file, two_dir, cache, logs)
    try:
        deadline = time.time() + 300
        while checkpoints.latest_checkpoint_step(two_dir / "checkpoints") is None:
            assert time.time() < deadline and all(p.poll() is None for p in hosts), \
                f"no checkpoint before the hosts ended:\n{_tail(logs[0])}\n{_tail(logs[1])}"
            time.sleep(0.05)
        _kill(hosts)
        killed_at = checkpoints.latest_checkpoint_step(two_dir / "checkpoints")
        assert killed_at is not None and killed_at < STEPS, "the kill must land before the end of training"

        hosts = _two_hosts(gin_file, two_dir, cache, logs)
        assert _wait_all(hosts, timeout=400) == [0, 0], f"{_tail(logs[0])}\n{_tail(logs[1])}"
        assert _wait_all([reference], timeout=300) == [0], _tail(tmp_path / "one.log")
    finally:
        _kill([*hosts, reference])
    assert f"resumed from step {killed_at}" in pathlib.Path(logs[0]).read_text()

    two, one = _final_params(two_dir), _final_params(one_dir)
    leaves = list(zip(jax.tree_util.tree_leaves(two), jax.tree_util.tree_leaves(one)))
    assert leaves
    for a, b in leaves:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
    evals = _final_eval(two_dir)
    assert evals and evals == _final_eval(one_dir)
    assert evals[0][2] == support.NUM_EXAMPLES  # the whole test split, each example once
