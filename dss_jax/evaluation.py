"""Evaluation of the label task: greedy decoding, the task's postprocessing and metric fns.

At test time distilling step-by-step runs only the label task (``predict: x``); which
task(s) a run evaluates is derived once, by ``Experiment.tasks().eval``.

``evaluate_task`` decodes the split in fixed-shape batches (one compilation), turns the
tokens into text with the task's vocabulary, applies ``task.postprocess_fn`` to
predictions and targets, and returns the task's predict-metric results (key
``accuracy`` for the DSS tasks, in percent 0-100 like T5's metrics) plus the
per-example predictions.

Decoding runs as training does: under the ``data`` x ``model`` mesh and its logical axis
rules (a one-device mesh when none is given), the parameters sharded as the rules say
(arrays already placed so are not moved, nothing is gathered onto one device), each
global batch of ``batch_size`` rows split over ``data``. Every host reads the split's
examples (their targets are needed for the metric, as in T5X's ``seqio.Evaluator``) and
gives only its own rows of each batch: global batch ``k`` holds examples
``[k*B, (k+1)*B)``, and a host gives the rows of its devices' ``data`` shards
(``BatchDecoder.host_rows``). The predictions are gathered from every host in example
order, so every host computes the same metrics; the last batch is padded with all-pad
rows whose predictions are dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import seqio
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dss_jax import decoding, input_pipeline, partitioning
from dss_jax.configs import T5Config


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


def _encoder_batch(examples: Sequence[Mapping[str, Any]], batch_size: int, input_length: int) -> np.ndarray:
    """Rows padded/trimmed to ``input_length``; missing rows (last batch) are all-pad."""
    out = np.zeros((batch_size, input_length), np.int32)
    for i, ex in enumerate(examples):
        tokens = np.asarray(ex["inputs"], np.int32)[:input_length]
        out[i, :len(tokens)] = tokens
    return out


@dataclasses.dataclass(frozen=True)
class BatchDecoder:
    """Greedy decoding of global batches on a mesh, each host giving its own rows.

    ``weights``: ``decoding.prepare_decode_weights`` of the parameters on ``mesh``."""

    config: T5Config
    weights: decoding.DecodeWeights
    mesh: Mesh
    rules: tuple
    max_decode_len: int

    def host_rows(self, batch_size: int) -> slice:
        """The rows of a global batch that this host gives: those of its devices' ``data`` shards."""
        data = self.mesh.shape[partitioning.DATA_AXIS]
        if batch_size % data:
            raise ValueError(f"eval batch_size {batch_size} must be a multiple of the mesh's data axis ({data})")
        index_map = partitioning.batch_sharding(self.mesh).addressable_devices_indices_map((batch_size,))
        rows = [index[0].indices(batch_size) for index in index_map.values()]
        return slice(min(start for start, _, _ in rows), max(stop for _, stop, _ in rows))

    def global_batch(self, local_rows: np.ndarray, batch_size: int) -> jax.Array:
        """The global [batch_size, length] array of every host's ``local_rows``, sharded over ``data``."""
        return jax.make_array_from_process_local_data(partitioning.batch_sharding(self.mesh), local_rows,
                                                      (batch_size,) + local_rows.shape[1:])

    def decode(self, local_rows: np.ndarray, batch_size: int, eos_id: int) -> np.ndarray:
        """Tokens of the whole global batch, on every host."""
        decode = decoding.sharded_greedy_decode(self.config, self.max_decode_len, self.mesh, self.rules)
        tokens = decode(self.weights, self.global_batch(local_rows, batch_size), eos_id)
        if tokens.is_fully_addressable:  # one host, or a mesh of this host's devices only
            return np.asarray(tokens)
        return np.asarray(multihost_utils.process_allgather(tokens, tiled=True))


def mesh_and_rules(mesh: Mesh | None = None, rules=None) -> tuple[Mesh, tuple]:
    """The given mesh and rules, or a one-device mesh (this host's first device) and the default rules."""
    if mesh is None:
        mesh = partitioning.make_mesh(1, 1, devices=jax.local_devices()[:1])
    return mesh, tuple(partitioning.logical_axis_rules() if rules is None else rules)


def batch_decoder(model, params, max_decode_len: int, mesh: Mesh | None = None, rules=None) -> BatchDecoder:
    """A ``BatchDecoder`` for ``model`` (its config resolved) with ``params`` placed on the mesh."""
    mesh, rules = mesh_and_rules(mesh, rules)
    weights = decoding.prepare_decode_weights(model.config, params, mesh, rules)
    return BatchDecoder(model.config, weights, mesh, rules, int(max_decode_len))


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


def _task(task_name: str):
    if task_name in seqio.TaskRegistry.names():
        return seqio.get_mixture_or_task(task_name)
    return input_pipeline.get_provider(task_name)


def evaluate_task(model, params, task_name: str, split: str = "validation", *,
                  sequence_lengths: Mapping[str, int] | None = None, batch_size: int = 64,
                  max_decode_len: int = 64, max_examples: int | None = None, mesh: Mesh | None = None,
                  rules=None) -> EvalResult:
    """Accuracy (and any other predict metric) of the label task ``task_name`` on ``split``,
    decoded on ``mesh`` under ``rules`` (default: one device) in global batches of ``batch_size``."""
    decoder = batch_decoder(model, params, max_decode_len, mesh, rules)
    return evaluate_with(decoder, task_name, split, sequence_lengths=sequence_lengths, batch_size=batch_size,
                         max_examples=max_examples)


def evaluate_with(decoder: BatchDecoder, task_name: str, split: str = "validation", *,
                  sequence_lengths: Mapping[str, int] | None = None, batch_size: int = 64,
                  max_examples: int | None = None) -> EvalResult:
    """``evaluate_task`` with a ``BatchDecoder`` built once for several tasks."""
    task = _task(task_name)
    if sequence_lengths is None:
        from dss_jax.experiment import DEFAULT_SEQUENCE_LENGTHS

        sequence_lengths = {"inputs": DEFAULT_SEQUENCE_LENGTHS["inputs"], "targets": decoder.max_decode_len}
    sequence_lengths = dict(sequence_lengths)
    vocab = task.output_features["targets"].vocabulary
    eos_id = int(vocab.eos_id)
    examples = task_examples(task, split, sequence_lengths, max_examples)
    rows = decoder.host_rows(batch_size)
    targets, predictions, records = [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        local = _encoder_batch(chunk[rows], rows.stop - rows.start, sequence_lengths["inputs"])
        tokens = decoder.decode(local, batch_size, eos_id)
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


def evaluate_tasks(model, params, task_names: Sequence[str], split: str, *, max_decode_len: int = 64,
                   mesh: Mesh | None = None, rules=None, **kwargs) -> dict[str, EvalResult]:
    """``evaluate_task`` of each task, the parameters placed and prepared once."""
    decoder = batch_decoder(model, params, max_decode_len, mesh, rules)
    return {name: evaluate_with(decoder, name, split, **kwargs) for name in task_names}


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
