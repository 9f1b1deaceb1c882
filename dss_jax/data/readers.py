"""Readers of the paper's `datasets.zip` layout: rows joined with teacher outputs.

A data directory holds, per benchmark `b`, the rows `b/b_{split}.json` (JSON lines) and
the teacher completions `b/llm/{split}_CoT_{i}.json` (JSON lists; file `i` covers rows
`i*B .. i*B+B-1`, B per benchmark). `load_split` returns the examples of one split with
the model input built exactly as the reference code builds it (`docs/METHOD.md`), the
gold label as text, and the teacher's rationale/label parsed by `dss_jax.data.parsing`.

Splits are `train`, `validation`, `test`. Benchmarks without a validation file (cqa,
svamp) carve 10 % of train out as validation (seed 0), after the optional training-fraction
subsample (seeded); both splits reproduce `datasets.Dataset.train_test_split` of the
reference code index for index.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dss_jax.data import parsing

DATA_DIR_ENV = "DSS_DATA_DIR"
SPLITS = ("train", "validation", "test")
NLI_LABELS = ("entailment", "neutral", "contradiction")
# What the NLI input join looks like as text; tokenisation joins the segments with the
# vocabulary's EOS id instead (see `Example.input_segments`).
EOS_PIECE = "</s>"
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0
FETCH_HINT = (
    "Point --data_dir (or the environment variable DSS_DATA_DIR) at a folder in the "
    "datasets.zip layout. The full datasets.zip of github.com/google-research/"
    "distilling-step-by-step (fetch it with `python -m dss_jax.data fetch --yes`) "
    "holds every split, including the e-SNLI and ANLI training splits."
)


class DataFileMissingError(FileNotFoundError):
    """A split or teacher-output file that a benchmark needs is not in the data dir."""


class TeacherOutputCountError(ValueError):
    """The teacher-output files do not hold exactly one completion per row."""


class BadRowError(ValueError):
    """A data row lacks a field or has a value the benchmark does not allow."""


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """How one benchmark is laid out and scored."""

    name: str
    teacher_file_rows: int  # B: completions per teacher-output file
    has_validation_file: bool
    metric: str  # "exact_match" or "equation_value"


BENCHMARKS: Dict[str, BenchmarkSpec] = {
    "cqa": BenchmarkSpec("cqa", 1000, False, "exact_match"),
    "svamp": BenchmarkSpec("svamp", 500, False, "equation_value"),
    "esnli": BenchmarkSpec("esnli", 5500, True, "exact_match"),
    "anli1": BenchmarkSpec("anli1", 5000, True, "exact_match"),
    "arith": BenchmarkSpec("arith", 1000, True, "equation_value"),
}


@dataclasses.dataclass(frozen=True)
class Example:
    """One benchmark row joined with its parsed teacher output.

    `input_segments` are the pieces of the model input that tokenisation joins with the
    EOS id: one segment for most benchmarks, (premise, hypothesis) for NLI, so that the
    tokenised input is `prefix + premise </s> hypothesis </s>`. `input` is the same text
    joined with the literal `</s>` (as the reference's `eos_token.join` writes it).
    """

    example_id: int
    input: str
    input_segments: Tuple[str, ...]
    gold_label: str
    teacher_rationale: str
    teacher_label: str
    parse_status: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SplitReport:
    """Counts that make a split's reading auditable (nothing is dropped silently)."""

    rows: int
    teacher_outputs: int
    missing_teacher_outputs: int
    extra_teacher_outputs: int


@dataclasses.dataclass(frozen=True)
class SplitData:
    examples: List[Example]
    report: SplitReport


def get_spec(benchmark: str) -> BenchmarkSpec:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark]


def resolve_data_dir(data_dir: Optional[os.PathLike] = None) -> pathlib.Path:
    """The data directory: the argument, else $DSS_DATA_DIR; a clear error if neither."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise DataFileMissingError(f"no data directory given and {DATA_DIR_ENV} is unset. {FETCH_HINT}")
    path = pathlib.Path(chosen).expanduser()
    if not path.is_dir():
        raise DataFileMissingError(f"data directory {path} does not exist. {FETCH_HINT}")
    return path


def _file_split_name(split: str) -> str:
    """Split names as the files spell them (`valid`), from ours (`validation`)."""
    return {"validation": "valid", "valid": "valid"}.get(split, split)


def rows_path(data_dir: pathlib.Path, benchmark: str, file_split: str) -> pathlib.Path:
    return data_dir / benchmark / f"{benchmark}_{file_split}.json"


def teacher_path(data_dir: pathlib.Path, benchmark: str, file_split: str, index: int) -> pathlib.Path:
    return data_dir / benchmark / "llm" / f"{file_split}_CoT_{index}.json"


def read_rows(data_dir: pathlib.Path, benchmark: str, file_split: str) -> List[dict]:
    """The JSON-lines rows of one split file, in file order."""
    path = rows_path(data_dir, benchmark, file_split)
    if not path.is_file():
        raise DataFileMissingError(
            f"{path} not found: benchmark {benchmark!r} split {file_split!r} needs it. {FETCH_HINT}"
        )
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise BadRowError(f"{path}:{line_number}: not valid JSON ({error})") from error
    return rows


# Placeholder for rows without a teacher completion (a JSON `null` completion is data).
MISSING_COMPLETION = object()

_TEACHER_FILE = re.compile(r"^(?P<split>.+)_CoT_(?P<index>\d+)\.json$")


def _teacher_file_indices(data_dir: pathlib.Path, benchmark: str, file_split: str) -> List[int]:
    llm_dir = data_dir / benchmark / "llm"
    if not llm_dir.is_dir():
        return []
    indices = []
    for entry in llm_dir.iterdir():
        match = _TEACHER_FILE.match(entry.name)
        if match and match.group("split") == file_split:
            indices.append(int(match.group("index")))
    return sorted(indices)


def read_teacher_outputs(
    data_dir: pathlib.Path, benchmark: str, file_split: str, num_rows: int, strict: bool = True
) -> Tuple[List[object], SplitReport]:
    """The teacher completions of one split, one per row, in row order.

    Files must be numbered 0, 1, ... with B completions each (the last may hold fewer).
    With `strict`, any count mismatch against `num_rows` is a TeacherOutputCountError;
    otherwise it is counted in the report (missing rows get `MISSING_COMPLETION`).
    """
    spec = get_spec(benchmark)
    expected_files = max(1, math.ceil(num_rows / spec.teacher_file_rows))
    indices = _teacher_file_indices(data_dir, benchmark, file_split)
    for index in range(expected_files):
        if index not in indices and (strict or index == 0):
            path = teacher_path(data_dir, benchmark, file_split, index)
            raise DataFileMissingError(
                f"{path} not found: benchmark {benchmark!r} split {file_split!r} has "
                f"{num_rows} rows, covered by teacher files 0..{expected_files - 1} of "
                f"{spec.teacher_file_rows} completions each. Write them with the teacher "
                f"step (dss_jax.teacher) or use the full datasets.zip. {FETCH_HINT}"
            )
    outputs: List[object] = []
    expected_index = 0
    for index in indices:
        if index != expected_index:
            raise TeacherOutputCountError(
                f"teacher files of {benchmark}/{file_split} are not numbered 0..n without gaps: "
                f"found indices {indices} in {data_dir / benchmark / 'llm'}"
            )
        path = teacher_path(data_dir, benchmark, file_split, index)
        with path.open(encoding="utf-8") as handle:
            try:
                completions = json.load(handle)
            except json.JSONDecodeError as error:
                raise TeacherOutputCountError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(completions, list):
            raise TeacherOutputCountError(f"{path}: expected a JSON list of completions")
        is_last = index == indices[-1]
        if not is_last and len(completions) != spec.teacher_file_rows:
            raise TeacherOutputCountError(
                f"{path} holds {len(completions)} completions; every file but the last must "
                f"hold {spec.teacher_file_rows} (B for {benchmark}) or rows lose their alignment"
            )
        outputs.extend(completions)
        expected_index += 1
    missing = max(0, num_rows - len(outputs))
    extra = max(0, len(outputs) - num_rows)
    if strict and (missing or extra):
        raise TeacherOutputCountError(
            f"{benchmark}/{file_split}: {num_rows} rows but {len(outputs)} teacher completions "
            f"in {data_dir / benchmark / 'llm'} ({'missing' if missing else 'extra'} "
            f"{missing or extra}); pass strict=False (stats: --lenient) to count instead of failing"
        )
    outputs = outputs[:num_rows] + [MISSING_COMPLETION] * missing
    report = SplitReport(num_rows, num_rows - missing + extra, missing, extra)
    return outputs, report


def _field(row: dict, key: str, where: str):
    if key not in row:
        raise BadRowError(f"{where}: missing field {key!r} (has {sorted(row)})")
    return row[key]


def _text_field(row: dict, key: str, where: str) -> str:
    value = _field(row, key, where)
    if not isinstance(value, str):
        raise BadRowError(f"{where}: field {key!r} must be a string, got {value!r}")
    return value


def cqa_input(question: str, choices: Sequence[str]) -> str:
    """The reference's CQA input: question, then the five lettered answer choices."""
    c0, c1, c2, c3, c4 = choices
    return f"{question}\nAnswer Choices:\n(a) {c0}\n(b) {c1}\n(c) {c2}\n(d) {c3}\n(e) {c4}"


def nli_label_text(label: object, where: str) -> str:
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(NLI_LABELS):
        raise BadRowError(f"{where}: NLI label must be 0, 1 or 2, got {label!r}")
    return NLI_LABELS[label]


def row_input_and_gold(benchmark: str, row: dict, where: str) -> Tuple[Tuple[str, ...], str]:
    """(input segments, gold label text) of one row, as the reference code builds them."""
    if benchmark == "cqa":
        choices = _field(row, "choices", where)
        if not isinstance(choices, list) or len(choices) != 5:
            raise BadRowError(f"{where}: cqa needs exactly 5 choices, got {choices!r}")
        question = _text_field(row, "question", where)
        return (cqa_input(question, [str(c) for c in choices]),), _text_field(row, "answer", where)
    if benchmark in ("svamp", "arith"):
        return (_text_field(row, "input", where),), _text_field(row, "label", where)
    if benchmark in ("esnli", "anli1"):
        premise = _text_field(row, "premise", where)
        hypothesis = _text_field(row, "hypothesis", where)
        return (premise, hypothesis), nli_label_text(_field(row, "label", where), where)
    raise ValueError(f"unknown benchmark {benchmark!r}")


def read_file_split(
    benchmark: str, file_split: str, data_dir: Optional[os.PathLike] = None, strict: bool = True
) -> SplitData:
    """All rows of one split file joined with their teacher outputs (no sampling)."""
    get_spec(benchmark)
    directory = resolve_data_dir(data_dir)
    rows = read_rows(directory, benchmark, file_split)
    completions, report = read_teacher_outputs(directory, benchmark, file_split, len(rows), strict)
    path = rows_path(directory, benchmark, file_split)
    examples = []
    for row_index, (row, completion) in enumerate(zip(rows, completions)):
        where = f"{path} row {row_index}"
        if not isinstance(row, dict):
            raise BadRowError(f"{where}: expected a JSON object, got {type(row).__name__}")
        segments, gold = row_input_and_gold(benchmark, row, where)
        if completion is MISSING_COMPLETION:
            parsed = parsing.parse_teacher_output(benchmark, None)
            status = "missing_teacher_output"
        else:
            parsed = parsing.parse_teacher_output(benchmark, completion)
            status = parsed.status
        examples.append(
            Example(
                example_id=row_index,
                input=EOS_PIECE.join(segments),
                input_segments=segments,
                gold_label=gold,
                teacher_rationale=parsed.rationale,
                teacher_label=parsed.label,
                parse_status=status,
            )
        )
    return SplitData(examples, report)


def train_test_split_indices(num_rows: int, test_size: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, test) indices exactly as `datasets.Dataset.train_test_split(test_size, seed)`."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    num_test = math.ceil(test_size * num_rows)
    num_train = num_rows - num_test
    if num_test == 0 or num_train <= 0:
        raise ValueError(f"cannot split {num_rows} rows with test_size {test_size}")
    permutation = np.random.default_rng(seed).permutation(num_rows)
    return permutation[num_test:], permutation[:num_test]


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"training fraction must be in (0, 1], got {fraction}")


def load_split(
    benchmark: str,
    split: str,
    data_dir: Optional[os.PathLike] = None,
    fraction: float = 1.0,
    seed: int = 0,
    strict: bool = True,
) -> SplitData:
    """The examples of `split` (train / validation / test) of `benchmark`.

    `fraction` < 1 subsamples the training file (seed `seed`, the reference's `--run`)
    before the validation carve-out of benchmarks without a validation file. The
    report counts the rows and teacher outputs of the underlying file.
    """
    spec = get_spec(benchmark)
    _check_fraction(fraction)
    if split == "valid":
        split = "validation"
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if split == "test" or (split == "validation" and spec.has_validation_file):
        return read_file_split(benchmark, _file_split_name(split), data_dir, strict)
    full_train = read_file_split(benchmark, "train", data_dir, strict)
    examples = full_train.examples
    if fraction < 1.0:
        kept, _ = train_test_split_indices(len(examples), 1.0 - fraction, seed)
        examples = [examples[i] for i in kept]
    if not spec.has_validation_file:
        train_idx, valid_idx = train_test_split_indices(len(examples), VALIDATION_FRACTION, VALIDATION_SEED)
        examples = [examples[i] for i in (train_idx if split == "train" else valid_idx)]
    return SplitData(examples, full_train.report)
