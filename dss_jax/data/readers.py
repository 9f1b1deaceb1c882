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

Teachers (`llm`, the reference's `--llm`): `palm` reads `b/llm/{split}_CoT_{i}.json` with
PaLM's parse rules; `gpt` reads `gpt-neox/b/{split}.json` (one JSON list per split, the
reference's `load_gpt_preds`) with GPT-NeoX's rules.

Augmentation (paper section 4.2): `extra_sources` adds unlabeled rows with their teacher
completions (`ExtraSource`, e.g. ASDiv problems annotated by the teacher step) to the
training split only; their label is the teacher's.

Bad data is an error that names the file (and row or line) and the data-dir setting:
missing or truncated files, invalid UTF-8, empty splits, a training file too small to
split, gold labels outside the benchmark's label set. `validate_benchmark` reads every
split a run will use up front and reports all problems at once.
"""
from __future__ import annotations

import codecs
import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from dss_jax.data import arithmetic, parsing

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
DATA_DIR_HINT = (
    "Fix or replace the file, or point the data-dir setting (--data_dir, "
    "dss_tasks.set_data_dir, or the environment variable DSS_DATA_DIR) at a complete copy "
    "of the datasets.zip layout."
)
GPT_DIR = "gpt-neox"
MIN_TRAIN_ROWS = 2
BAD_LABEL_POLICIES = ("error", "skip")
MAX_LISTED_PROBLEMS = 5


class DataFileMissingError(FileNotFoundError):
    """A split or teacher-output file that a benchmark needs is not in the data dir."""


class TeacherOutputCountError(ValueError):
    """The teacher-output files do not hold exactly one completion per row."""


class BadRowError(ValueError):
    """A data row lacks a field or has a value the benchmark does not allow."""


class BadEncodingError(BadRowError):
    """A data or teacher file is not valid UTF-8."""


class EmptySplitError(BadRowError):
    """A split file has no rows, or a training file too few to train on or to split."""


class BadLabelError(BadRowError):
    """A gold label outside the benchmark's label set (NLI not 0/1/2, a CQA answer that
    is not one of the choices, a math label that is not an equation)."""


class DataValidationError(ValueError):
    """`validate_benchmark` found problems; the message lists every one, with its file."""


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
    # ASDiv in the reference's layout (`asdiv/asdiv_train.json` rows Body, Question,
    # Formula, Answer; `asdiv/llm/train_CoT_{i}.json`): augmentation data for SVAMP.
    "asdiv": BenchmarkSpec("asdiv", 1000, False, "equation_value"),
}
# Benchmarks whose inputs are built alike (an extra source must match its benchmark's).
INPUT_FAMILIES = {"cqa": "cqa", "esnli": "nli", "anli1": "nli", "svamp": "math", "arith": "math", "asdiv": "math"}


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
    skipped_bad_labels: int = 0  # rows dropped under bad_labels="skip"
    extra_source_rows: int = 0  # augmentation rows added to the training split
    skipped_extra_rows: int = 0  # augmentation rows without a parsable teacher label


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


def read_text(path: pathlib.Path) -> str:
    """The file's text, strictly UTF-8 (a leading byte-order mark is dropped); invalid
    bytes are a BadEncodingError naming the line."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise BadEncodingError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}). "
            f"{DATA_DIR_HINT}"
        ) from None


def _json_lines(path: pathlib.Path, text: str) -> List[object]:
    rows = []
    lines = text.split("\n")
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            cut = line_number == len(lines) and not text.endswith("\n")
            why = " the file looks truncated (its last line is cut off)." if cut else ""
            raise BadRowError(f"{path}:{line_number}: not valid JSON ({error});{why} {DATA_DIR_HINT}") from None
    return rows


def read_rows(data_dir: pathlib.Path, benchmark: str, file_split: str) -> List[dict]:
    """The JSON-lines rows of one split file, in file order."""
    path = rows_path(data_dir, benchmark, file_split)
    if not path.is_file():
        raise DataFileMissingError(
            f"{path} not found: benchmark {benchmark!r} split {file_split!r} needs it. {FETCH_HINT}"
        )
    return _json_lines(path, read_text(path))


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
        completions = read_completion_list(path)
        is_last = index == indices[-1]
        if not is_last and len(completions) != spec.teacher_file_rows:
            raise TeacherOutputCountError(
                f"{path} holds {len(completions)} completions; every file but the last must "
                f"hold {spec.teacher_file_rows} (B for {benchmark}) or rows lose their alignment"
            )
        outputs.extend(completions)
        expected_index += 1
    what = f"{benchmark}/{file_split} ({rows_path(data_dir, benchmark, file_split)})"
    return _align(outputs, num_rows, what, data_dir / benchmark / "llm", strict)


def read_completion_list(path: pathlib.Path) -> list:
    """One teacher-output file: a JSON list of completions (clear errors otherwise)."""
    text = read_text(path)
    try:
        completions = json.loads(text)
    except json.JSONDecodeError as error:
        raise TeacherOutputCountError(
            f"{path}: not valid JSON ({error}); the file is truncated or damaged. {DATA_DIR_HINT}"
        ) from None
    if not isinstance(completions, list):
        raise TeacherOutputCountError(f"{path}: expected a JSON list of completions")
    return completions


def _align(outputs: List[object], num_rows: int, what: str, where: pathlib.Path, strict: bool):
    """Completions padded/cut to one per row, with the counts; strict: mismatch is an error."""
    missing = max(0, num_rows - len(outputs))
    extra = max(0, len(outputs) - num_rows)
    if strict and (missing or extra):
        raise TeacherOutputCountError(
            f"{what}: {num_rows} rows but {len(outputs)} teacher completions "
            f"in {where} ({'missing' if missing else 'extra'} "
            f"{missing or extra}): the rows file or a teacher file is truncated or from another copy; "
            f"pass strict=False (stats: --lenient) to count instead of failing."
        )
    outputs = outputs[:num_rows] + [MISSING_COMPLETION] * missing
    report = SplitReport(num_rows, num_rows - missing + extra, missing, extra)
    return outputs, report


def gpt_teacher_path(data_dir: pathlib.Path, benchmark: str, file_split: str) -> pathlib.Path:
    """GPT-NeoX outputs as the reference reads them: `gpt-neox/<b>/<split>.json`."""
    return data_dir / GPT_DIR / benchmark / f"{file_split}.json"


def read_gpt_teacher_outputs(
    data_dir: pathlib.Path, benchmark: str, file_split: str, num_rows: int, strict: bool = True
) -> Tuple[List[object], SplitReport]:
    """GPT-NeoX completions of one split (one file, one completion per row, in row order)."""
    path = gpt_teacher_path(data_dir, benchmark, file_split)
    if not path.is_file():
        raise DataFileMissingError(
            f"{path} not found: benchmark {benchmark!r} split {file_split!r} with llm 'gpt' reads "
            f"GPT-NeoX completions from {GPT_DIR}/{benchmark}/{file_split}.json (one JSON list per "
            f"split, one completion per row). {DATA_DIR_HINT}"
        )
    what = f"{benchmark}/{file_split} ({rows_path(data_dir, benchmark, file_split)}, llm gpt)"
    return _align(read_completion_list(path), num_rows, what, path, strict)


def teacher_outputs(
    data_dir: pathlib.Path, benchmark: str, file_split: str, num_rows: int, strict: bool, llm: str
) -> Tuple[List[object], SplitReport]:
    """The completions of teacher `llm` (palm: `llm/` files; gpt: `gpt-neox/`)."""
    if parsing.check_llm(llm) == parsing.GPT:
        return read_gpt_teacher_outputs(data_dir, benchmark, file_split, num_rows, strict)
    return read_teacher_outputs(data_dir, benchmark, file_split, num_rows, strict)


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
        raise BadLabelError(f"{where}: NLI label must be 0, 1 or 2, got {label!r}")
    return NLI_LABELS[label]


def asdiv_answer(answer: str) -> str:
    """ASDiv's answer without its unit, as the reference takes it: `9 (apples)` -> `9`."""
    return answer.split(" ")[0]


def _math_gold(label: str, where: str) -> str:
    if arithmetic.evaluate_equation(label) is None:
        raise BadLabelError(f"{where}: label {label!r} is not an equation (numbers, + - * /, parentheses)")
    return label


def row_input(benchmark: str, row: dict, where: str) -> Tuple[str, ...]:
    """The input segments of one row, as the reference code builds them."""
    if benchmark == "cqa":
        choices = _field(row, "choices", where)
        if not isinstance(choices, list) or len(choices) != 5:
            raise BadRowError(f"{where}: cqa needs exactly 5 choices, got {choices!r}")
        return (cqa_input(_text_field(row, "question", where), [str(c) for c in choices]),)
    if benchmark in ("svamp", "arith"):
        return (_text_field(row, "input", where),)
    if benchmark == "asdiv":
        return (f"{_text_field(row, 'Body', where)}\n{_text_field(row, 'Question', where)}",)
    if benchmark in ("esnli", "anli1"):
        return (_text_field(row, "premise", where), _text_field(row, "hypothesis", where))
    raise ValueError(f"unknown benchmark {benchmark!r}")


def row_gold(benchmark: str, row: dict, where: str) -> str:
    """The gold label text of one row; BadLabelError when it is outside the label set."""
    if benchmark == "cqa":
        answer = _text_field(row, "answer", where)
        if answer not in [str(c) for c in _field(row, "choices", where)]:
            raise BadLabelError(f"{where}: answer {answer!r} is not one of the choices")
        return answer
    if benchmark in ("svamp", "arith"):
        return _math_gold(_text_field(row, "label", where), where)
    if benchmark == "asdiv":
        return _math_gold(asdiv_answer(_text_field(row, "Answer", where)), where)
    if benchmark in ("esnli", "anli1"):
        return nli_label_text(_field(row, "label", where), where)
    raise ValueError(f"unknown benchmark {benchmark!r}")


def row_input_and_gold(benchmark: str, row: dict, where: str) -> Tuple[Tuple[str, ...], str]:
    """(input segments, gold label text) of one row, as the reference code builds them."""
    return row_input(benchmark, row, where), row_gold(benchmark, row, where)


def _check_row_object(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise BadRowError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _parsed(benchmark: str, completion: object, llm: str) -> Tuple[parsing.ParsedTeacher, str]:
    if completion is MISSING_COMPLETION:
        return parsing.parse_teacher_output(benchmark, None, llm), "missing_teacher_output"
    parsed = parsing.parse_teacher_output(benchmark, completion, llm)
    return parsed, parsed.status


def _example(row_id: int, segments: Tuple[str, ...], gold: str, parsed: parsing.ParsedTeacher, status: str) -> Example:
    return Example(
        example_id=row_id,
        input=EOS_PIECE.join(segments),
        input_segments=segments,
        gold_label=gold,
        teacher_rationale=parsed.rationale,
        teacher_label=parsed.label,
        parse_status=status,
    )


def _label_problems_message(path: pathlib.Path, problems: List[str], total_rows: int) -> str:
    listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return (
        f"{path}: {len(problems)} of {total_rows} rows have a gold label outside the benchmark's "
        f"label set: {listed}{more}. Fix the rows, or pass bad_labels='skip' to drop and count "
        f"them. {DATA_DIR_HINT}"
    )


def read_file_split(
    benchmark: str,
    file_split: str,
    data_dir: Optional[os.PathLike] = None,
    strict: bool = True,
    llm: str = parsing.PALM,
    bad_labels: str = "error",
) -> SplitData:
    """All rows of one split file joined with their teacher outputs (no sampling).

    An empty file is an EmptySplitError. Rows whose gold label is outside the label set
    are all collected: `bad_labels="error"` raises one BadLabelError listing them,
    `"skip"` drops them and counts them in the report (`skipped_bad_labels`).
    """
    get_spec(benchmark)
    if bad_labels not in BAD_LABEL_POLICIES:
        raise ValueError(f"bad_labels must be one of {BAD_LABEL_POLICIES}, got {bad_labels!r}")
    directory = resolve_data_dir(data_dir)
    rows = read_rows(directory, benchmark, file_split)
    path = rows_path(directory, benchmark, file_split)
    if not rows:
        raise EmptySplitError(
            f"{path} has no rows: benchmark {benchmark!r} split {file_split!r} is empty. {DATA_DIR_HINT}")
    completions, report = teacher_outputs(directory, benchmark, file_split, len(rows), strict, llm)
    examples, problems = [], []
    for row_index, (row, completion) in enumerate(zip(rows, completions)):
        where = f"{path} row {row_index}"
        row = _check_row_object(row, where)
        segments = row_input(benchmark, row, where)
        try:
            gold = row_gold(benchmark, row, where)
        except BadLabelError as error:
            problems.append(str(error))
            continue
        parsed, status = _parsed(benchmark, completion, llm)
        examples.append(_example(row_index, segments, gold, parsed, status))
    if problems and bad_labels == "error":
        raise BadLabelError(_label_problems_message(path, problems, len(rows)))
    return SplitData(examples, dataclasses.replace(report, skipped_bad_labels=len(problems)))


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


def _normalise_split(split: str) -> str:
    split = "validation" if split == "valid" else split
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    return split


def _split_indices_of(path: pathlib.Path, num_rows: int, test_size: float, seed: int, why: str):
    """`train_test_split_indices`, with an error naming the file when it has too few rows."""
    try:
        return train_test_split_indices(num_rows, test_size, seed)
    except ValueError:
        raise EmptySplitError(
            f"{path}: {num_rows} training rows are too few to {why}; a training file needs "
            f"enough rows that each part keeps at least one. {DATA_DIR_HINT}"
        ) from None


def _check_train_rows(path: pathlib.Path, num_rows: int) -> None:
    if num_rows < MIN_TRAIN_ROWS:
        raise EmptySplitError(
            f"{path} has {num_rows} row{'s' if num_rows != 1 else ''} after reading; a training split "
            f"needs at least {MIN_TRAIN_ROWS}. {DATA_DIR_HINT}"
        )


def load_split(
    benchmark: str,
    split: str,
    data_dir: Optional[os.PathLike] = None,
    fraction: float = 1.0,
    seed: int = 0,
    strict: bool = True,
    llm: str = parsing.PALM,
    bad_labels: str = "error",
    extra_sources: Sequence["ExtraSource"] = (),
) -> SplitData:
    """The examples of `split` (train / validation / test) of `benchmark`.

    `fraction` < 1 subsamples the training file (seed `seed`, the reference's `--run`)
    before the validation carve-out of benchmarks without a validation file. `llm` picks
    the teacher (`palm`, `gpt`). `extra_sources` are appended to the training split only
    (after the subsample and the carve-out). The report counts the rows and teacher
    outputs of the underlying file, and the rows added or skipped.
    """
    spec = get_spec(benchmark)
    _check_fraction(fraction)
    split = _normalise_split(split)
    if split == "test" or (split == "validation" and spec.has_validation_file):
        return read_file_split(benchmark, _file_split_name(split), data_dir, strict, llm, bad_labels)
    full_train = read_file_split(benchmark, "train", data_dir, strict, llm, bad_labels)
    path = rows_path(resolve_data_dir(data_dir), benchmark, "train")
    examples = full_train.examples
    _check_train_rows(path, len(examples))
    if fraction < 1.0:
        kept, _ = _split_indices_of(path, len(examples), 1.0 - fraction, seed, f"keep a fraction {fraction:g}")
        examples = [examples[i] for i in kept]
    if not spec.has_validation_file:
        train_idx, valid_idx = _split_indices_of(
            path, len(examples), VALIDATION_FRACTION, VALIDATION_SEED, "carve 10 % out as validation")
        examples = [examples[i] for i in (train_idx if split == "train" else valid_idx)]
    if split != "train" or not extra_sources:
        return SplitData(examples, full_train.report)
    extra = load_extra_sources(benchmark, extra_sources, data_dir, first_id=full_train.report.rows)
    return SplitData(examples + extra.examples, dataclasses.replace(
        full_train.report, extra_source_rows=len(extra.examples), skipped_extra_rows=extra.report.skipped_extra_rows))


# ---------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class ExtraSource:
    """Unlabeled training rows and their teacher completions, in the datasets.zip layout.

    Rows are `<data_dir>/<benchmark>/<benchmark>_<split>.json` in `benchmark`'s row format
    (a label field is not needed), completions `<benchmark>/llm/<split>_CoT_<i>.json`
    (what `python -m dss_jax.teacher --benchmark B --split S` writes) or, with
    `llm="gpt"`, `gpt-neox/<benchmark>/<split>.json`. Examples: `svamp:asdiv` (ASDiv
    problems converted by `python -m dss_jax.data asdiv`, annotated by the teacher step),
    `asdiv:train` (the reference code's own ASDiv layout).
    """

    benchmark: str
    split: str
    llm: str = parsing.PALM

    @property
    def name(self) -> str:
        """The part of a task name that identifies this source, e.g. `svamp_asdiv`."""
        llm = "" if self.llm == parsing.PALM else f"_{self.llm}"
        return f"{self.benchmark}_{self.split}{llm}"

    def __str__(self) -> str:
        return f"{self.benchmark}:{self.split}" + ("" if self.llm == parsing.PALM else f":{self.llm}")


_SOURCE_PART = re.compile(r"^[A-Za-z0-9]+$")


def parse_extra_source(text: object) -> ExtraSource:
    """`ExtraSource` from `benchmark:split[:llm]` (an ExtraSource passes through)."""
    if isinstance(text, ExtraSource):
        return _checked_source(text)
    parts = str(text).split(":")
    if len(parts) not in (2, 3) or not all(_SOURCE_PART.match(p) for p in parts):
        raise ValueError(
            f"extra source {text!r} must be 'benchmark:split' or 'benchmark:split:llm' (letters and "
            f"digits only), e.g. 'svamp:asdiv' or 'asdiv:train'"
        )
    return _checked_source(ExtraSource(*parts))


def _checked_source(source: ExtraSource) -> ExtraSource:
    get_spec(source.benchmark)
    parsing.parser_for(source.benchmark, source.llm)
    return source


def check_extra_sources(benchmark: str, sources: Iterable[object]) -> Tuple[ExtraSource, ...]:
    """Parsed sources whose inputs are built like `benchmark`'s (ValueError otherwise)."""
    parsed = tuple(parse_extra_source(s) for s in sources)
    for source in parsed:
        if INPUT_FAMILIES[source.benchmark] != INPUT_FAMILIES[get_spec(benchmark).name]:
            raise ValueError(
                f"extra source {source} has {source.benchmark} inputs, which are not built like "
                f"{benchmark}'s; use a source of the same kind ({INPUT_FAMILIES[benchmark]})"
            )
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"extra sources {[str(s) for s in parsed]} name one source twice")
    return parsed


def read_extra_source(
    source: ExtraSource, data_dir: Optional[os.PathLike] = None, first_id: int = 0
) -> SplitData:
    """The rows of one extra source whose teacher completion parses, labelled by the teacher.

    Both the gold and the teacher label of an example are the teacher's label (the rows
    are unlabeled). Rows whose completion does not parse have no label and are skipped
    and counted (`skipped_extra_rows`). Example ids are `first_id + row index`.
    """
    directory = resolve_data_dir(data_dir)
    rows = read_rows(directory, source.benchmark, source.split)
    path = rows_path(directory, source.benchmark, source.split)
    if not rows:
        raise EmptySplitError(f"{path} has no rows: extra source {source} is empty. {DATA_DIR_HINT}")
    completions, report = teacher_outputs(directory, source.benchmark, source.split, len(rows), True, source.llm)
    examples = []
    for row_index, (row, completion) in enumerate(zip(rows, completions)):
        where = f"{path} row {row_index}"
        segments = row_input(source.benchmark, _check_row_object(row, where), where)
        parsed, status = _parsed(source.benchmark, completion, source.llm)
        if not parsed.ok:
            continue
        examples.append(_example(first_id + row_index, segments, parsed.label, parsed, status))
    return SplitData(examples, dataclasses.replace(report, skipped_extra_rows=len(rows) - len(examples)))


def load_extra_sources(
    benchmark: str, sources: Sequence[object], data_dir: Optional[os.PathLike] = None, first_id: int = 0
) -> SplitData:
    """Every extra source's examples, ids continuing after `first_id` source by source."""
    examples: List[Example] = []
    skipped = rows = 0
    for source in check_extra_sources(benchmark, sources):
        data = read_extra_source(source, data_dir, first_id + rows)
        examples.extend(data.examples)
        skipped += data.report.skipped_extra_rows
        rows += data.report.rows
    report = SplitReport(rows, rows, 0, 0, extra_source_rows=len(examples), skipped_extra_rows=skipped)
    return SplitData(examples, report)


# ---------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class SplitCheck:
    """What `validate_benchmark` found in one split (all counts, nothing dropped silently)."""

    split: str
    examples: int
    file_rows: int
    teacher_outputs: int
    parse_failures: int
    skipped_bad_labels: int
    extra_source_rows: int
    skipped_extra_rows: int


def _split_check(split: str, data: SplitData) -> SplitCheck:
    report = data.report
    failures = sum(1 for e in data.examples if e.parse_status != parsing.OK)
    return SplitCheck(split, len(data.examples), report.rows, report.teacher_outputs, failures,
                      report.skipped_bad_labels, report.extra_source_rows, report.skipped_extra_rows)


DATA_ERRORS = (DataFileMissingError, TeacherOutputCountError, BadRowError)


def validate_benchmark(
    benchmark: str,
    data_dir: Optional[os.PathLike] = None,
    splits: Sequence[str] = SPLITS,
    fraction: float = 1.0,
    seed: int = 0,
    *,
    llm: str = parsing.PALM,
    extra_sources: Sequence[object] = (),
    strict: bool = True,
    bad_labels: str = "error",
) -> Dict[str, SplitCheck]:
    """Reads every split a run will use; {split: SplitCheck}, or one DataValidationError.

    Call it before building anything. Every split is read completely (rows, teacher
    outputs, gold labels); the error lists each failing split with its file and cause
    (missing or truncated file, invalid UTF-8, empty split, training file too small,
    gold labels outside the label set, teacher-output counts) and the data-dir setting.
    """
    get_spec(benchmark)
    parsing.check_llm(llm)
    extra = check_extra_sources(benchmark, extra_sources)
    checks: Dict[str, SplitCheck] = {}
    errors: List[str] = []
    for split in splits:
        split = _normalise_split(split)
        try:
            data = load_split(benchmark, split, data_dir, fraction, seed, strict, llm, bad_labels, extra)
        except DATA_ERRORS as error:
            errors.append(f"[{benchmark} {split}] {error}")
            continue
        checks[split] = _split_check(split, data)
    if errors:
        hint = "" if all("DSS_DATA_DIR" in e for e in errors) else f" {DATA_DIR_HINT}"
        raise DataValidationError(
            f"data check failed for {len(errors)} of {len(splits)} splits of {benchmark!r}:\n"
            + "\n".join(errors) + hint
        )
    return checks
