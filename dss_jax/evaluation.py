"""Evaluation of the label task: greedy decoding, the task's postprocessing and metric fns.

At test time distilling step-by-step runs only the label task (``predict: x``), so the
trainer evaluates the label task(s) that belong to the training task or mixture:

* mixture ``dss_{b}_mix_{l}_lambda*`` -> its non-rationale sub-tasks (``dss_{b}_label_{l}``);
* paired task ``dss_{b}_paired_{l}`` -> ``dss_{b}_label_{l}``;
* any other task (the baselines) -> itself.

``evaluate_task`` decodes the split in fixed-shape batches (one compilation), turns the
tokens into text with the task's vocabulary, applies ``task.postprocess_fn`` to
predictions and targets, and returns the task's predict-metric results (key
``accuracy`` for the DSS tasks, in percent 0-100 like T5's metrics) plus the
per-example predictions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import seqio

from dss_jax import decoding, input_pipeline


def eval_task_names(train_task: str) -> list[str]:
    """The label task(s) whose accuracy a training run on ``train_task`` reports."""
    provider = input_pipeline.get_provider(train_task)
    kind = input_pipeline.training_kind(provider)
    if kind == "mixture":
        names = [t.name for t in provider.tasks if input_pipeline.task_id_of(t.name) == 0]
        if not names:
            raise ValueError(f"mixture {train_task} has no label task to evaluate")
        return names
    if kind == "paired":
        if "_paired_" not in train_task:
            raise ValueError(f"cannot tell the label task of paired task {train_task!r}; set the eval tasks")
        name = train_task.replace("_paired_", "_label_", 1)
        input_pipeline.get_provider(name)  # clear error when it is not registered
        return [name]
    return [train_task]


@dataclasses.dataclass
class EvalResult:
    """Metrics of one task/split and the examples behind them."""

    task: str
    split: str
    metrics: dict
    num_examples: int
    predictions: list  # dicts: inputs (text when available), target, prediction (postprocessed), raw

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return None if value is None else float(value)


def _token_list(row: np.ndarray, eos_id: int) -> list[int]:
    out = []
    for t in row.tolist():
        if t == eos_id:
            break
        out.append(int(t))
    return [t for t in out if t != 0]


def _to_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return _to_text(value.item())
    return str(value)


def _batches(examples: Iterable[Mapping[str, Any]], batch_size: int):
    batch = []
    for ex in examples:
        batch.append(ex)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encoder_batch(examples: Sequence[Mapping[str, Any]], batch_size: int, input_length: int) -> np.ndarray:
    """Rows padded/trimmed to ``input_length``; missing rows (last batch) are all-pad."""
    out = np.zeros((batch_size, input_length), np.int32)
    for i, ex in enumerate(examples):
        tokens = np.asarray(ex["inputs"], np.int32)[:input_length]
        out[i, :len(tokens)] = tokens
    return out


def decode_inputs(model, params, encoder_tokens: np.ndarray, max_decode_len: int, eos_id: int) -> np.ndarray:
    """Greedy label decoding of one batch (jitted once per shape by ``dss_jax.decoding``)."""
    return np.asarray(decoding.greedy_decode(model, params, encoder_tokens, max_decode_len=max_decode_len,
                                             eos_id=eos_id))


def task_examples(task: seqio.Task, split: str, sequence_lengths: Mapping[str, int],
                  max_examples: int | None = None) -> list[dict]:
    """The split's examples in order (tokenised + pretokenised), as numpy dicts."""
    if split not in task.splits:
        raise ValueError(f"task {task.name} has no split {split!r} (has {', '.join(task.splits)})")
    ds = task.get_dataset(dict(sequence_lengths), split=split, shuffle=False, num_epochs=1)
    if max_examples is not None:
        ds = ds.take(max_examples)
    import tensorflow_datasets as tfds

    return list(tfds.as_numpy(ds))


def evaluate_task(model, params, task_name: str, split: str = "validation", *,
                  sequence_lengths: Mapping[str, int] | None = None, batch_size: int = 64,
                  max_decode_len: int = 64, max_examples: int | None = None) -> EvalResult:
    """Accuracy (and any other predict metric) of the label task ``task_name`` on ``split``."""
    task = seqio.get_mixture_or_task(task_name) if task_name in seqio.TaskRegistry.names() else \
        input_pipeline.get_provider(task_name)
    sequence_lengths = dict(sequence_lengths or {"inputs": 512, "targets": max_decode_len})
    vocab = task.output_features["targets"].vocabulary
    eos_id = int(vocab.eos_id)
    examples = task_examples(task, split, sequence_lengths, max_examples)
    targets, predictions, records = [], [], []
    for chunk in _batches(examples, batch_size):
        tokens = decode_inputs(model, params, _encoder_batch(chunk, batch_size, sequence_lengths["inputs"]),
                               max_decode_len, eos_id)
        for ex, row in zip(chunk, tokens[:len(chunk)]):
            raw = vocab.decode(_token_list(row, eos_id))
            prediction = task.postprocess_fn(raw, example=ex, is_target=False)
            target_text = _to_text(ex["targets_pretokenized"]) if "targets_pretokenized" in ex else \
                vocab.decode(_token_list(np.asarray(ex["targets"]), eos_id))
            target = task.postprocess_fn(target_text, example=ex, is_target=True)
            targets.append(target)
            predictions.append(prediction)
            records.append({
                "inputs": _to_text(ex["inputs_pretokenized"]) if "inputs_pretokenized" in ex else None,
                "target": _to_text(target), "prediction": _to_text(prediction), "raw": raw,
            })
    metrics: dict = {}
    for fn in task.predict_metric_fns:
        metrics.update({k: float(v) if np.ndim(v) == 0 else v for k, v in fn(targets, predictions).items()})
    return EvalResult(task=task_name, split=split, metrics=metrics, num_examples=len(examples),
                      predictions=records)


def evaluate_tasks(model, params, task_names: Sequence[str], split: str, **kwargs) -> dict[str, EvalResult]:
    return {name: evaluate_task(model, params, name, split, **kwargs) for name in task_names}


def accuracy_table(results: Mapping[str, EvalResult] | Sequence[Mapping[str, Any]], title: str = "") -> str:
    """A plain-text table: task | split | examples | accuracy (percent, T5's metric convention)."""
    rows = []
    for r in (results.values() if isinstance(results, Mapping) else results):
        if isinstance(r, EvalResult):
            rows.append((r.task, r.split, r.num_examples, r.accuracy))
        else:
            rows.append((r["task"], r["split"], r["num_examples"], r.get("accuracy")))
    width = max([len("task")] + [len(r[0]) for r in rows])
    lines = [title] if title else []
    lines.append(f"{'task':<{width}}  {'split':<10} {'examples':>8} {'accuracy':>9}")
    lines.append("-" * (width + 31))
    for task, split, n, acc in rows:
        acc_text = "n/a" if acc is None else f"{acc:8.2f}%"
        lines.append(f"{task:<{width}}  {split:<10} {n:>8} {acc_text:>9}")
    return "\n".join(lines)
