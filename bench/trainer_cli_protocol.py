"""The CPU benchmark protocol through the command users run: ``python -m dss_jax.train``.

    python bench/trainer_cli_protocol.py --mode train        # fp32
    python bench/trainer_cli_protocol.py --mode train_bf16   # bfloat16 activations, fp32 params

Same work as ``bench/dss_jax_protocol.py`` (../shared/bench/PROTOCOL.md): the protocol's
first 1024 CQA rows in order (``bench/protocol_tasks.py``), spm8k tokens truncated at 128,
T5 1.1 small (vocab 32128, dropout 0, random init), 8 examples = 8 label + 8 rationale
sequences a step, the paired loss 0.5 / 0.5, AdamW 5e-5 without clipping.  The trainer
runs it with ``InputConfig.pack = 'buckets'`` and the protocol script's row-length
buckets, so each step holds exactly the protocol script's packed rows, compiled before the
first step.  The trainer logs every step (``TrainConfig.log_every = 1``), so
``metrics.jsonl`` holds each step's ``steps_per_sec``; the median over the timed steps
(after ``--warmup``) is the figure.  The final evaluation decodes 8 examples; its time,
the start-up and the compilation are in ``process_wall_s`` only.
Progress goes to stderr, one JSON result line to stdout (as ``dss_jax_protocol.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
ENCODER_ROW_LENS = (240, 256)  # bench/dss_jax_protocol.py's buckets
DECODER_ROW_LENS = (80, 96, 128)


def gin_bindings(mode: str, steps: int, batch_size: int, max_len: int, config: str, vocab_size: int | None) -> list[str]:
    """The ``--gin.X=Y`` arguments that make a trainer run the protocol's work."""
    overrides = {"dropout_rate": 0.0}
    if mode == "train_bf16":  # as dss_jax_protocol.py --mode train_bf16 (and the peer's autocast lm_head)
        overrides.update(dtype="bfloat16", logits_dot_in_fp32=False)
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    values = {
        "INITIAL_CHECKPOINT": "'random'",
        "model_config.name": repr(config),
        "model_config.overrides": repr(overrides),
        "Experiment.task": "'dss_bench_cqa_paired'",
        "Experiment.eval_tasks": "['dss_bench_cqa_label']",
        "Experiment.task_module": "'protocol_tasks'",
        "InputConfig.batch_size": batch_size,
        "InputConfig.sequence_lengths": repr({"inputs": max_len, "targets": max_len}),
        "InputConfig.shuffle": False,
        "InputConfig.pack": "'buckets'",
        "InputConfig.encoder_row_lens": repr(ENCODER_ROW_LENS),
        "InputConfig.decoder_row_lens": repr(DECODER_ROW_LENS),
        "OptimizerConfig.learning_rate": 5e-5,
        "OptimizerConfig.schedule": "'constant'",
        "OptimizerConfig.clip": None,
        "TrainConfig.steps": steps,
        "TrainConfig.log_every": 1,
        "TrainConfig.progress_bar": False,
        "TrainConfig.tensorboard": False,
        "EvalConfig.every": 0,
        "EvalConfig.max_examples": 8,
        "EvalConfig.batch_size": 8,
        "EvalConfig.max_decode_len": 8,
        "CheckpointConfig.every": 100000,
        "CheckpointConfig.async_save": False,
    }
    return [f"--gin.{name}={value}" for name, value in values.items()]


def step_times(metrics_file: pathlib.Path) -> list[float]:
    """Seconds of each logged step (log_every = 1: one record per step), in step order."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
    return [1.0 / r["steps_per_sec"] for r in train]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True, choices=["train", "train_bf16"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_len", type=int, default=128)
    p.add_argument("--config", default="t5_1_1_small")
    p.add_argument("--vocab_size", type=int, default=None, help="override the config's vocabulary (smoke runs)")
    p.add_argument("--model_dir", type=pathlib.Path, default=None, help="default: a temporary directory")
    args = p.parse_args()

    model_dir = args.model_dir or pathlib.Path(tempfile.mkdtemp(prefix="dss_trainer_cli_")) / "run"
    cmd = [sys.executable, "-m", "dss_jax.train", "--gin_file=dss_cqa_small.gin", f"--gin.MODEL_DIR='{model_dir}'",
           *gin_bindings(args.mode, args.warmup + args.steps, args.batch_size, args.max_len, args.config,
                         args.vocab_size)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=sys.stderr, stderr=sys.stderr)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"python -m dss_jax.train exited with {done.returncode}")
    times = step_times(model_dir / "metrics.jsonl")
    if len(times) != args.warmup + args.steps:
        raise SystemExit(f"expected {args.warmup + args.steps} train records in {model_dir}, found {len(times)}")
    timed = times[args.warmup:]
    med = statistics.median(timed)
    print(json.dumps({
        "impl": "dss_jax.train", "mode": args.mode, "command": cmd, "model_dir": str(model_dir),
        "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps,
        "median_s_per_step": med, "mean_s_per_step": statistics.fmean(timed), "min_s_per_step": min(timed),
        "max_s_per_step": max(timed), "examples_per_s": args.batch_size / med,
        "sequences_per_s": 2 * args.batch_size / med, "warmup_step_s": times[:args.warmup], "timed_step_s": timed,
        "trainer_wall_s": wall, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "peak_rss_mib_self": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }), flush=True)


if __name__ == "__main__":
    main()
