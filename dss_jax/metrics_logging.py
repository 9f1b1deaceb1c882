"""Training logs: a tqdm progress bar, TensorBoard summaries and ``MODEL_DIR/metrics.jsonl``.

``metrics.jsonl`` has one JSON object per line:
* ``{"kind": "train", "step", "first_step", "loss", "loss_label", "loss_rationale",
  "learning_rate", "examples_per_sec", "grad_norm", ...}`` per logged step: the means over
  steps ``first_step .. step`` (a line ends at every log step and every checkpoint);
* ``{"kind": "eval", "step", "task", "split", "accuracy", "num_examples", ...}`` per
  evaluated task.
``StepMeter`` keeps the train loop's bookkeeping: device metrics of the steps since the
last log line are fetched only when a line is due (or a checkpoint, to check for NaN/Inf
first), then averaged, with throughput.
Each step appears once, with the values of the run that survived: a resumed run drops
(``drop_after``) the records of the steps after the checkpoint it restored, which it redoes,
and ``read_metrics`` keeps the last record of each (kind, step, task, split), so an eval
of the same checkpoint run twice counts once.  A line torn by a kill is skipped.
Only the chief process (``jax.process_index() == 0``) writes. On cloud storage
(``gs://``), where files cannot be appended to, the file is rewritten whole at each record.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping

from dss_jax import storage

METRICS_FILE = "metrics.jsonl"
SUPERSEDED_SUFFIX = ".superseded"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; nothing after the last good checkpoint was saved."""


@dataclasses.dataclass
class _Pending:
    step: int
    metrics: Any
    examples: int
    sequences: int


class StepMeter:
    """Per-step device metrics, fetched lazily, averaged per log line with throughput.

    ``summarize`` is ``trainer.summarize_metrics`` (device tree -> host floats).
    """

    def __init__(self, start_step: int, summarize: Callable[[Any], Mapping[str, float]], clock=time.time):
        self._summarize, self._clock = summarize, clock
        self._pending: list[_Pending] = []
        self._window: list[tuple[_Pending, Mapping[str, float]]] = []
        self._start_time, self._start_step = clock(), start_step

    def add(self, step: int, metrics: Any, examples: int, sequences: int) -> None:
        self._pending.append(_Pending(step, metrics, examples, sequences))

    def check_finite(self, last_good: str) -> None:
        """Fetch the queued metrics; raise ``NonFiniteLossError`` at the first NaN/Inf loss."""
        for item in self._pending:
            summary = self._summarize(item.metrics)
            if not math.isfinite(summary["loss"]):
                raise NonFiniteLossError(
                    f"training stopped: the loss is {summary['loss']} at step {item.step}; no later state is "
                    f"saved. Last good checkpoint: {last_good}. Lower the learning rate, enable clipping or "
                    f"z-loss, or check the data.")
            self._window.append((item, summary))
        self._pending = []

    def line(self, step: int, learning_rate: float) -> dict:
        """The mean of every metric over steps ``first_step .. step`` (since the last line), plus rates.

        Resets the window. A resumed run's meter starts at the restored step, so its first
        line covers only steps of the resumed run.
        """
        summaries = [summary for _, summary in self._window]
        keys = dict.fromkeys(k for summary in summaries for k in summary)
        out = {k: sum(s[k] for s in summaries if k in s) / sum(1 for s in summaries if k in s) for k in keys}
        out["first_step"] = self._start_step + 1
        elapsed = max(self._clock() - self._start_time, 1e-9)
        out["learning_rate"] = float(learning_rate)
        out["examples_per_sec"] = sum(item.examples for item, _ in self._window) / elapsed
        out["sequences_per_sec"] = sum(item.sequences for item, _ in self._window) / elapsed
        out["steps_per_sec"] = (step - self._start_step) / elapsed
        self._window, self._start_time, self._start_step = [], self._clock(), step
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN / inf are not JSON; keep them visible as strings
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    return value


class MetricsLogger:
    """Writes train/eval records to metrics.jsonl and TensorBoard and drives the progress bar."""

    def __init__(self, model_dir: str | os.PathLike, total_steps: int, start_step: int = 0, *,
                 is_chief: bool = True, tensorboard: bool = True, progress_bar: bool = True,
                 drop_after: int | None = None):
        """``drop_after``: a resumed trainer's restored step; the records of later steps are removed first."""
        self.model_dir = storage.run_path(model_dir)
        self.is_chief = is_chief
        self.path = self.model_dir / METRICS_FILE
        self._writer = None
        self._bar = None
        if not is_chief:
            return
        self.model_dir.mkdir(parents=True, exist_ok=True)
        dropped = drop_records_after(self.path, drop_after) if drop_after is not None else 0
        if storage.is_remote(self.path):
            self._file = None
            self._lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        else:
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from clu import metric_writers

            self._writer = metric_writers.SummaryWriter(str(self.model_dir / "tensorboard"))
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if dropped:
            self.message(f"{self.path}: dropped {dropped} record(s) of steps after {drop_after}, which this run "
                         f"redoes (kept in {self.path.name}{SUPERSEDED_SUFFIX})")

    def _write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"
        if self._file is None:  # cloud storage: no appends, rewrite the (small) file
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
            return
        self._file.write(line)
        self._file.flush()

    def log_train(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.is_chief:
            return
        record = {"kind": "train", "step": int(step), "time": time.time(), **metrics}
        self._write(record)
        if self._writer is not None:
            self._writer.write_scalars(int(step), {f"train/{k}": float(v) for k, v in metrics.items()
                                                   if isinstance(v, (int, float)) and k != "first_step"})
        if self._bar is not None:
            shown = {k: f"{metrics[k]:.4g}" for k in ("loss", "loss_label", "loss_rationale", "examples_per_sec")
                     if k in metrics}
            self._bar.set_postfix(shown, refresh=False)

    def log_eval(self, step: int, task: str, split: str, metrics: Mapping[str, Any], num_examples: int) -> None:
        if not self.is_chief:
            return
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._write({"kind": "eval", "step": int(step), "task": task, "split": split,
                     "num_examples": int(num_examples), **scalars})
        if self._writer is not None:
            self._writer.write_scalars(int(step), {f"eval/{task}/{k}": float(v) for k, v in scalars.items()})
        if self._bar is not None:
            self._bar.write(f"step {step}: {task}/{split} " +
                            " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def message(self, text: str) -> None:
        if not self.is_chief:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.is_chief:
            return
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        if self._file is not None:
            self._file.close()


def _parse_lines(text: str) -> tuple[list[dict], int]:
    """(records, number of torn lines): a line a kill cut short is not JSON and is skipped."""
    records, torn = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return records, torn


def _key(record: Mapping[str, Any]) -> tuple:
    return record.get("kind"), record.get("step"), record.get("task"), record.get("split")


def drop_records_after(path, step: int) -> int:
    """Remove the records of steps after ``step`` (and torn lines) from a metrics file; returns how many.

    The removed lines are appended to ``<file>.superseded``.  The file is replaced
    atomically (local disk) or rewritten whole (cloud storage).
    """
    path = storage.run_path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep, superseded = [], []
    for line in lines:
        records, _ = _parse_lines(line)
        (keep if records and int(records[0].get("step", 0)) <= step else superseded).append(line)
    superseded = [line for line in superseded if line.strip()]
    if not superseded:
        return 0
    old = path.parent / f"{path.name}{SUPERSEDED_SUFFIX}"
    previous = old.read_text() if old.exists() else ""
    old.write_text(previous + "".join(line if line.endswith("\n") else line + "\n" for line in superseded))
    text = "".join(keep)
    storage.write_text_atomically(path, text)
    return len(superseded)


def read_metrics(model_dir_or_file: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl (a model dir or the file itself), each step once.

    Of records with the same (kind, step, task, split) the last one is kept, in the place
    of the first; lines torn by a kill are skipped.
    """
    path = storage.run_path(model_dir_or_file)
    if path.is_dir():
        path = path / METRICS_FILE
    records, _ = _parse_lines(path.read_text())
    latest = {_key(r): r for r in records}
    return list(latest.values())


def eval_records(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    return [dict(r) for r in records if r.get("kind") == "eval"]
