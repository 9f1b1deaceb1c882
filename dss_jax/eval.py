"""``python -m dss_jax.eval``: accuracy of a trained run's checkpoint on a benchmark split.

    python -m dss_jax.eval --gin_file=runs/eval.gin --gin.MODEL_DIR="'/tmp/run'" \
        --gin.BENCHMARK="'arith'" [--gin.SPLIT="'test'"] [--gin.STEP=1000]

The model config comes from ``MODEL_DIR/model_config.json``; the parameters from the
latest (or the given) checkpoint in ``MODEL_DIR/checkpoints``.  Only the label task is
decoded (greedy), as at test time in the paper.  Prints an accuracy table and one JSON
line, and appends an eval record to ``MODEL_DIR/metrics.jsonl``.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Mapping, Sequence

import gin

from dss_jax import train as train_lib


def label_task_name(benchmark: str, train_mode: str = "step_by_step", labels: str = "gold") -> str:
    """The task decoded at test time for a run of ``train_mode``."""
    if train_mode == "step_by_step":
        return f"dss_{benchmark}_label_{labels}"
    task, _, _ = train_lib.resolve_task(benchmark, train_mode, labels)
    return task


def load_run(model_dir: str, step: int | None = None, fsdp: bool = False):
    """(model, params, step) of a trained run, params placed on a mesh over all devices."""
    from dss_jax import checkpoints, partitioning
    from dss_jax.model import T5, abstract_params

    config = train_lib.read_model_config(model_dir)
    model = T5(config)
    mesh = partitioning.make_mesh()
    rules = partitioning.logical_axis_rules(fsdp=fsdp)
    shardings = partitioning.param_shardings(model, mesh, rules)
    abstract = partitioning.with_sharding(abstract_params(config), shardings)
    ckpt_dir = pathlib.Path(model_dir) / train_lib.CHECKPOINT_SUBDIR
    step = checkpoints.latest_checkpoint_step(ckpt_dir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    params = checkpoints.restore_params(ckpt_dir / str(step), abstract)
    return model, params, step


@gin.configurable
def evaluate_checkpoint(model_dir: str = gin.REQUIRED, benchmark: str = gin.REQUIRED, labels: str = "gold",
                        train_mode: str = "step_by_step", task: str | None = None, split: str = "test",
                        step: int | None = None, sequence_lengths: Mapping[str, int] | None = None,
                        batch_size: int = 64, max_decode_len: int = 64, max_examples: int | None = None,
                        vocab: str | None = None) -> dict:
    """Evaluate; returns ``{"task", "split", "step", "num_examples", **metrics}``."""
    train_lib._set_vocab(vocab)
    from dss_jax import evaluation, metrics_logging

    task = task or label_task_name(benchmark, train_mode, labels)
    model, params, step = load_run(model_dir, step)
    result = evaluation.evaluate_task(model, params, task, split,
                                      sequence_lengths=sequence_lengths or {"inputs": 512, "targets": 256},
                                      batch_size=batch_size, max_decode_len=max_decode_len,
                                      max_examples=max_examples)
    logger = metrics_logging.MetricsLogger(model_dir, 0, is_chief=True, tensorboard=False, progress_bar=False)
    logger.log_eval(step, task, split, result.metrics, result.num_examples)
    logger.close()
    print(evaluation.accuracy_table({task: result}, title=f"checkpoint step {step} of {model_dir}"))
    record = {"task": task, "split": split, "step": step, "num_examples": result.num_examples, **result.metrics}
    print(json.dumps(record), flush=True)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    from dss_jax import gin_utils

    gin_utils.parse_command_line("python -m dss_jax.eval", __doc__, argv)
    evaluate_checkpoint()
    return 0

if __name__ == "__main__":
    from dss_jax import host_memory

    host_memory.reexec_with_huge_pages()
    sys.exit(main())
