"""The registry of benchmarks the teacher step knows: prompt, row reader and parse rule.

Each `TeacherBenchmark` says how to turn one data row into the fields of its prompt
template, which stop sequences end the teacher's answer after one example, how many
completions each output file holds, how to read the rows and the gold label, and how
to split a completion into (rationale, label). The built-in entries (cqa, esnli, anli1,
svamp, and the embedded arith) use the readers and parsers of `dss_jax.data`; a user
adds a benchmark with `register_benchmark(TeacherBenchmark(...))`.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Callable, Dict, List, Optional, Sequence

from dss_jax.data import metrics, parsing, readers
from dss_jax.teacher.prompts import PromptTemplate, load_template, packaged_template

STOP_AT_NEXT_QUESTION = ("\n\nQ:",)
STOP_AT_NEXT_PREMISE = ("\n\nPremise:",)


@dataclasses.dataclass(frozen=True)
class TeacherBenchmark:
    """Everything the teacher step needs to know about one benchmark.

    name: the benchmark folder name in the data dir (`DATA_DIR/<name>/...`).
    prompt_fields: row, where -> {placeholder: text} for the prompt's query block.
    stop: stop sequences that end the completion after one answer (at most 4).
    rows_per_file: B, completions per output file `<split>_CoT_<i>.json`.
    read_rows: data_dir, file_split -> list of raw row dicts, in file order.
    gold_label: row, where -> gold label text, or None when the rows carry no label.
    parse: completion -> dss_jax.data.parsing.ParsedTeacher.
    accuracy: (gold labels, teacher labels) -> fraction correct, for the teacher-accuracy report.
    prompt_file: a template path; None means the packaged prompts/<name>.txt.
    """

    name: str
    prompt_fields: Callable[[dict, str], Dict[str, str]]
    stop: tuple
    rows_per_file: int
    read_rows: Callable[[pathlib.Path, str], List[dict]]
    gold_label: Callable[[dict, str], Optional[str]]
    parse: Callable[[str], parsing.ParsedTeacher]
    accuracy: Callable[[Sequence[str], Sequence[str]], float]
    prompt_file: Optional[str] = None

    def template(self) -> PromptTemplate:
        if self.prompt_file is not None:
            return load_template(self.prompt_file)
        return packaged_template(self.name)


_REGISTRY: Dict[str, TeacherBenchmark] = {}


def register_benchmark(benchmark: TeacherBenchmark, overwrite: bool = False) -> TeacherBenchmark:
    """Add a benchmark to the registry (ValueError if the name is taken and not `overwrite`)."""
    if benchmark.name in _REGISTRY and not overwrite:
        raise ValueError(f"teacher benchmark {benchmark.name!r} is already registered")
    if len(benchmark.stop) > 4:
        raise ValueError(f"{benchmark.name}: at most 4 stop sequences are allowed")
    if benchmark.rows_per_file <= 0:
        raise ValueError(f"{benchmark.name}: rows_per_file must be positive")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> TeacherBenchmark:
    if name not in _REGISTRY:
        raise ValueError(f"unknown teacher benchmark {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_benchmarks() -> List[str]:
    return sorted(_REGISTRY)


def file_split_name(split: str) -> str:
    """Split names as the files spell them: `validation` -> `valid`."""
    return "valid" if split in ("valid", "validation") else split


# --- the built-in benchmarks -------------------------------------------------------------

def _text(row: dict, key: str, where: str) -> str:
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, str):
        raise readers.BadRowError(f"{where}: field {key!r} must be a string, got {value!r}")
    return value


def cqa_prompt_fields(row: dict, where: str) -> Dict[str, str]:
    choices = row.get("choices") if isinstance(row, dict) else None
    if not isinstance(choices, list) or len(choices) != 5:
        raise readers.BadRowError(f"{where}: cqa needs exactly 5 choices, got {choices!r}")
    lettered = "\n".join(f"({letter}) {choice}" for letter, choice in zip("abcde", choices))
    return {"question": _text(row, "question", where), "choices": lettered}


def nli_prompt_fields(row: dict, where: str) -> Dict[str, str]:
    return {"premise": _text(row, "premise", where), "hypothesis": _text(row, "hypothesis", where)}


def math_prompt_fields(row: dict, where: str) -> Dict[str, str]:
    """SVAMP-style rows: the problem (`Body\\nQuestion`) on one line."""
    return {"problem": " ".join(_text(row, "input", where).split())}


def _reader_rows(benchmark: str) -> Callable[[pathlib.Path, str], List[dict]]:
    return lambda data_dir, file_split: readers.read_rows(pathlib.Path(data_dir), benchmark, file_split)


def _reader_gold(benchmark: str) -> Callable[[dict, str], Optional[str]]:
    def gold(row: dict, where: str) -> Optional[str]:
        if "label" not in row and "answer" not in row:
            return None  # unlabeled rows (e.g. the user's own augmentation data)
        return readers.row_input_and_gold(benchmark, row, where)[1]

    return gold


def _parser(benchmark: str) -> Callable[[str], parsing.ParsedTeacher]:
    return lambda completion: parsing.parse_teacher_output(benchmark, completion)


def _builtin(name: str, prompt_fields, stop) -> TeacherBenchmark:
    return TeacherBenchmark(
        name=name,
        prompt_fields=prompt_fields,
        stop=stop,
        rows_per_file=readers.BENCHMARKS[name].teacher_file_rows,
        read_rows=_reader_rows(name),
        gold_label=_reader_gold(name),
        parse=_parser(name),
        accuracy=functools.partial(metrics.accuracy_fraction, name),
    )


register_benchmark(_builtin("cqa", cqa_prompt_fields, STOP_AT_NEXT_QUESTION))
register_benchmark(_builtin("esnli", nli_prompt_fields, STOP_AT_NEXT_PREMISE))
register_benchmark(_builtin("anli1", nli_prompt_fields, STOP_AT_NEXT_PREMISE))
register_benchmark(_builtin("svamp", math_prompt_fields, STOP_AT_NEXT_QUESTION))
register_benchmark(_builtin("arith", math_prompt_fields, STOP_AT_NEXT_QUESTION))
