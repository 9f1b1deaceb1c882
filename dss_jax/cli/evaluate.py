"""``python -m dss_jax.eval``: accuracy of a trained run's checkpoint on a split.

    python -m dss_jax.eval --gin_file=runs/eval.gin --gin.MODEL_DIR="'/tmp/run'" \
        [--gin.evaluate_checkpoint.split="'validation'"] [--gin.evaluate_checkpoint.step=1000]

The experiment (benchmark, method, labels, fraction, seed, vocabulary, model) is read from
``MODEL_DIR/experiment.json``, so the label task(s) are those of the run's own training
fraction; the parameters come from the latest (or the given) checkpoint.  Only the label
task is decoded (greedy), as at test time in the paper, and scored against the gold
labels.  Prints an accuracy table and one JSON line per task, and appends eval records to
``MODEL_DIR/metrics.jsonl``.
"""
from __future__ import annotations

import json
from typing import Sequence

import gin


@gin.configurable
def evaluate_checkpoint(model_dir: str = gin.REQUIRED, split: str = "test", step: int | None = None,
                        max_examples: int | None = None) -> list[dict]:
    """Evaluate; returns one ``{"task", "split", "step", "num_examples", **metrics}`` per label task."""
    import dataclasses

    from dss_jax import evaluation, experiment as experiment_lib, hardware, metrics_logging, run_dir

    if split not in ("train", "validation", "test"):
        raise experiment_lib.ConfigError(f"evaluate_checkpoint.split = {split!r} is not valid: expected 'train', "
                                         f"'validation' or 'test'")
    directory = run_dir.RunDir(model_dir)
    experiment, run = directory.read()
    eval_config = dataclasses.replace(run.eval, split=split, max_examples=max_examples)
    experiment.use_vocabulary()
    experiment.validate_data((split,))
    tasks = experiment.tasks()
    model, params, step, mesh, rules = run_dir.restore_for_inference(
        directory, hardware.resolve(experiment.model), run.mesh, step)
    results = evaluation.evaluate_tasks(
        model, params, tasks.eval, eval_config.split, mesh=mesh, rules=rules,
        sequence_lengths=experiment.input.sequence_lengths, batch_size=eval_config.batch_size,
        max_decode_len=eval_config.max_decode_len, max_examples=eval_config.max_examples)
    logger = metrics_logging.MetricsLogger(directory.path, 0, is_chief=True, tensorboard=False, progress_bar=False)
    records = []
    for name, result in results.items():
        logger.log_eval(step, name, result.split, result.metrics, result.num_examples)
        records.append({"task": name, "split": result.split, "step": step, "num_examples": result.num_examples,
                        **result.metrics})
    logger.close()
    print(evaluation.accuracy_table(results, title=f"checkpoint step {step} of {directory}"))
    for record in records:
        print(json.dumps(record), flush=True)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    from dss_jax import gin_utils

    return gin_utils.run_entrypoint("python -m dss_jax.eval", __doc__, argv, evaluate_checkpoint)
