"""Label accuracy per benchmark, as SeqIO metric functions and postprocessors.

- cqa, esnli, anli1: a prediction is right when its text equals the gold label text.
- svamp, arith: right when the predicted equation's value equals the gold equation's,
  both evaluated by `dss_jax.data.arithmetic` (never `eval`).

SeqIO metric functions take `(targets, predictions)` (lists of postprocessed strings)
and return `{"accuracy": percent}` (0-100, like T5's `accuracy` metric). The plain
`*_fraction` helpers return a fraction in [0, 1] for reports such as `stats`.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

from dss_jax.data.arithmetic import equations_equal

ANSWER_MARKER = "So the answer is"


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def exact_match_fraction(targets: Sequence[str], predictions: Sequence[str]) -> float:
    _check_lengths(targets, predictions)
    if not targets:
        return 0.0
    return sum(t == p for t, p in zip(targets, predictions)) / len(targets)


def equation_fraction(targets: Sequence[str], predictions: Sequence[str]) -> float:
    _check_lengths(targets, predictions)
    if not targets:
        return 0.0
    return sum(equations_equal(p, t) for t, p in zip(targets, predictions)) / len(targets)


def exact_match_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
    """SeqIO metric: percent of predictions whose text equals the target text."""
    return {"accuracy": 100.0 * exact_match_fraction(targets, predictions)}


def equation_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
    """SeqIO metric: percent of predicted equations whose value equals the target's."""
    return {"accuracy": 100.0 * equation_fraction(targets, predictions)}


_FRACTION_BY_METRIC: Mapping[str, Callable[[Sequence[str], Sequence[str]], float]] = {
    "exact_match": exact_match_fraction,
    "equation_value": equation_fraction,
}
_SEQIO_METRIC_BY_METRIC = {
    "exact_match": exact_match_accuracy,
    "equation_value": equation_accuracy,
}


def _metric_name(benchmark: str) -> str:
    from dss_jax.data.readers import get_spec

    return get_spec(benchmark).metric


def accuracy_fraction(benchmark: str, targets: Sequence[str], predictions: Sequence[str]) -> float:
    """Accuracy in [0, 1] of `predictions` under `benchmark`'s own metric."""
    return _FRACTION_BY_METRIC[_metric_name(benchmark)](targets, predictions)


def seqio_metric_fn(benchmark: str) -> Callable[[Sequence[str], Sequence[str]], Dict[str, float]]:
    """The SeqIO metric function of `benchmark` (`{"accuracy": percent}`)."""
    return _SEQIO_METRIC_BY_METRIC[_metric_name(benchmark)]


def _as_text(output) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return str(output)


def label_postprocessor(output, example: Optional[Mapping] = None, is_target: bool = False) -> str:
    """Decoded label-task output -> label text (unchanged: the reference compares as is)."""
    del example, is_target
    return _as_text(output)


def rationale_postprocessor(output, example: Optional[Mapping] = None, is_target: bool = False) -> str:
    """Decoded rationale-task output -> rationale text, whitespace-trimmed."""
    del example, is_target
    return _as_text(output).strip()


def rationale_then_label_target(rationale: str, label: str) -> str:
    """The single target of the 'rationale then label' ablation."""
    return f"{rationale.strip()} {ANSWER_MARKER} {label.strip()}".strip()


def label_from_rationale_then_label(output, example: Optional[Mapping] = None, is_target: bool = False) -> str:
    """The label after the last `So the answer is` of an ablation output ('' if none)."""
    del example, is_target
    text = _as_text(output)
    if ANSWER_MARKER not in text:
        return ""
    return text.rsplit(ANSWER_MARKER, 1)[1].strip()
