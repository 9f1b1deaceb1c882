"""Per-split statistics of a benchmark: rows, teacher outputs, parse failures, teacher accuracy.

`python -m dss_jax.data stats --benchmark cqa --data_dir DIR [--json] [--llm gpt]`.
"""
from __future__ import annotations

import collections
from typing import Dict, Optional

from dss_jax.data import metrics, parsing, readers


def split_stats(benchmark: str, split_data: readers.SplitData) -> Dict[str, object]:
    """Counts and teacher accuracy of one split's examples."""
    examples = split_data.examples
    failures = collections.Counter(e.parse_status for e in examples if e.parse_status != parsing.OK)
    failure_counts: Dict[str, int] = dict(sorted(failures.items()))
    failure_counts["total"] = sum(failures.values())
    with_output = [e for e in examples if e.parse_status != "missing_teacher_output"]
    accuracy = metrics.accuracy_fraction(
        benchmark, [e.gold_label for e in examples], [e.teacher_label for e in examples]
    )
    return {
        "rows": len(examples),
        "teacher_outputs": len(with_output),
        "parse_failures": failure_counts,
        "teacher_accuracy": accuracy,
        "file_report": {
            "rows": split_data.report.rows,
            "teacher_outputs": split_data.report.teacher_outputs,
            "missing_teacher_outputs": split_data.report.missing_teacher_outputs,
            "extra_teacher_outputs": split_data.report.extra_teacher_outputs,
        },
    }


def benchmark_stats(
    benchmark: str,
    data_dir: Optional[str] = None,
    fraction: float = 1.0,
    seed: int = 0,
    strict: bool = True,
    llm: str = "palm",
) -> Dict[str, Dict[str, object]]:
    """{split: stats} of teacher `llm`'s outputs; a split whose files are missing gets {"error": message}."""
    result: Dict[str, Dict[str, object]] = {}
    for split in readers.SPLITS:
        try:
            data = readers.load_split(benchmark, split, data_dir, fraction, seed, strict, llm)
        except readers.DataFileMissingError as error:
            result[split] = {"error": str(error)}
            continue
        result[split] = split_stats(benchmark, data)
    return result


def format_table(benchmark: str, stats: Dict[str, Dict[str, object]]) -> str:
    lines = [f"benchmark {benchmark}"]
    for split, values in stats.items():
        if "error" in values:
            lines.append(f"  {split:<10} missing: {values['error']}")
            continue
        failures = values["parse_failures"]
        kinds = ", ".join(f"{k} {v}" for k, v in failures.items() if k != "total") or "none"
        lines.append(
            f"  {split:<10} rows {values['rows']:>6}  teacher outputs {values['teacher_outputs']:>6}  "
            f"parse failures {failures['total']:>4} ({kinds})  "
            f"teacher accuracy {100 * values['teacher_accuracy']:.2f}%"
        )
    return "\n".join(lines)
