"""``python -m dss_jax.infer``: predictions of a trained run as JSON lines.

    python -m dss_jax.infer --gin_file=runs/infer.gin --gin.MODEL_DIR="'/tmp/run'" \
        --gin.OUTPUT="'/tmp/run/predictions.jsonl'" [--gin.infer.rationales=True]

The experiment is read from ``MODEL_DIR/experiment.json``.  One line per example of the
split, in order: ``{"index", "input", "target", "prediction", "raw_prediction"}`` from the
label task (``predict: x``; the target is the gold label), plus ``"rationale"`` (the decoded
``explain: x`` output) when ``infer.rationales = True``.
"""
from __future__ import annotations

import json
from typing import Sequence

import gin


@gin.configurable
def infer(model_dir: str = gin.REQUIRED, output: str = gin.REQUIRED, split: str = "test", step: int | None = None,
          rationales: bool = False, max_examples: int | None = None, rationale_max_decode_len: int = 256) -> int:
    """Write predictions; returns the number of lines written."""
    from dss_jax import evaluation, experiment as experiment_lib, hardware, run_dir, storage

    if split not in ("train", "validation", "test"):
        raise experiment_lib.ConfigError(f"infer.split = {split!r} is not valid: expected 'train', "
                                         f"'validation' or 'test'")
    for name, value in (("max_examples", max_examples), ("rationale_max_decode_len", rationale_max_decode_len)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise experiment_lib.ConfigError(f"infer.{name} = {value!r} is not valid: expected an integer >= 1")
    directory = run_dir.RunDir(model_dir)
    experiment, run = directory.read()
    experiment.use_vocabulary()
    experiment.validate_data((split,))
    tasks = experiment.tasks()
    if rationales and tasks.rationale is None:
        raise experiment_lib.ConfigError(f"infer.rationales = True, but the run in {directory} "
                                         f"({experiment.method}) has no rationale task")
    model, params, step, mesh, rules = run_dir.restore_for_inference(
        directory, hardware.resolve(experiment.model), run.mesh, step)
    lengths = experiment.input.sequence_lengths
    common = dict(mesh=mesh, rules=rules, batch_size=run.eval.batch_size, max_examples=max_examples)
    label_task = tasks.eval[0]
    labels = evaluation.evaluate_task(model, params, label_task, split, sequence_lengths=lengths,
                                      max_decode_len=run.eval.max_decode_len, **common)
    explained = None
    if rationales:
        rationale_lengths = dict(lengths, targets=max(lengths["targets"], rationale_max_decode_len))
        explained = evaluation.evaluate_task(model, params, tasks.rationale, split, sequence_lengths=rationale_lengths,
                                             max_decode_len=rationale_max_decode_len, **common).predictions
        if len(explained) != len(labels.predictions):
            raise ValueError(f"{tasks.rationale} has {len(explained)} {split} examples but {label_task} has "
                             f"{len(labels.predictions)}; they cannot be paired")
    out_path = storage.run_path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, record in enumerate(labels.predictions):
        line = {"index": i, "input": record["inputs"], "target": record["target"],
                "prediction": record["prediction"], "raw_prediction": record["raw"]}
        if explained is not None:
            line["rationale"] = explained[i]["raw"]
        lines.append(json.dumps(line) + "\n")
    out_path.write_text("".join(lines))
    print(f"wrote {len(lines)} predictions of {label_task} ({split}, checkpoint step {step}) to {out_path}; "
          f"accuracy {labels.accuracy}", flush=True)
    return len(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from dss_jax import gin_utils

    return gin_utils.run_entrypoint("python -m dss_jax.infer", __doc__, argv, infer)
