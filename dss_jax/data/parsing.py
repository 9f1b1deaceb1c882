"""Teacher-output parsing: split a teacher LLM completion into (rationale, label).

One parser per benchmark, each reproducing the reference code of Hsieh et al. 2023
(`data_utils.py` of google-research/distilling-step-by-step, as specified in
`docs/METHOD.md`), including what it produces when parsing fails (a single space, or
empty strings for anli1). Where the reference code would crash instead (cqa without
`So the answer is`), we return the left part of the split as the rationale and a single
space as the label, and say so in `status`.

Two teachers, as the reference's `--llm` flag: `palm` (PaLM-540B, the default) and `gpt`
(GPT-NeoX, `_parse_gpt_output`): the GPT rules also strip leading whitespace, give
single spaces when CQA has no `So the answer is`, and fall back to `The answer is`
for anli1. `parse_teacher_output(benchmark, completion, llm)` picks the rule.

`parse_teacher_output` never raises on any input; `status` is `"ok"` or the kind of
failure, so callers can count failures instead of dropping rows silently.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, List

OK = "ok"
NOT_A_STRING = "not_a_string"
EMPTY = "empty"
NO_ANSWER_MARKER = "no_answer_marker"
MULTIPLE_ANSWER_MARKERS = "multiple_answer_markers"
NO_CHOICE_MARKER = "no_choice_marker"
NO_EQUATION = "no_equation"
EMPTY_LABEL = "empty_label"

FAILURE_KINDS = (
    NOT_A_STRING,
    EMPTY,
    NO_ANSWER_MARKER,
    MULTIPLE_ANSWER_MARKERS,
    NO_CHOICE_MARKER,
    NO_EQUATION,
    EMPTY_LABEL,
)

# The reference code's label when it cannot find one.
SINGLE_SPACE = " "

_CQA_CHOICE_MARKER = re.compile(r"\(.\)")
# Greedy, single line (`.` does not match a newline), first match: as the reference.
_EQUATION_SPAN = re.compile(r"\(.*\)")


@dataclasses.dataclass(frozen=True)
class ParsedTeacher:
    """A teacher completion split into its rationale and label, and how that went."""

    rationale: str
    label: str
    status: str

    @property
    def ok(self) -> bool:
        return self.status == OK


def _cut_continuation(completion: str, next_example_marker: str) -> str:
    """Drops the few-shot continuation the teacher wrote after its answer."""
    return completion.split(next_example_marker)[0].rstrip()


def _cqa_label(rationale: str, after_marker: str) -> ParsedTeacher:
    """The label after the first `(x)` choice marker, stripped, one trailing `.` removed."""
    after_choice = _CQA_CHOICE_MARKER.split(after_marker)
    if len(after_choice) < 2:
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_CHOICE_MARKER)
    label = after_choice[1].strip()
    if not label:
        return ParsedTeacher(rationale, SINGLE_SPACE, EMPTY_LABEL)
    if label.endswith("."):
        label = label[:-1]
    status = OK if label else EMPTY_LABEL
    return ParsedTeacher(rationale, label, status)


def parse_cqa(completion: str) -> ParsedTeacher:
    """CommonsenseQA: `... So the answer is (d) math problem.` -> label `math problem`."""
    kept = _cut_continuation(completion, "Q:")
    parts = kept.split("So the answer is", 1)
    rationale = parts[0].rstrip()
    if len(parts) == 1:
        # The reference code raises here; we keep the text as rationale and count it.
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_ANSWER_MARKER)
    return _cqa_label(rationale, parts[1])


def _marker_failure(parts: List[str]) -> str:
    return NO_ANSWER_MARKER if len(parts) == 1 else MULTIPLE_ANSWER_MARKERS


def parse_cqa_gpt(completion: str) -> ParsedTeacher:
    """CommonsenseQA, GPT-NeoX rule: stripped, exactly one `So the answer is`, else spaces."""
    kept = completion.split("Q:")[0].strip()
    parts = kept.split("So the answer is")
    if len(parts) != 2:
        return ParsedTeacher(SINGLE_SPACE, SINGLE_SPACE, _marker_failure(parts))
    return _cqa_label(parts[0].rstrip(), parts[1])


def _svamp_from_kept(kept: str) -> ParsedTeacher:
    parts = kept.split("The answer is")
    if len(parts) != 2:
        # The reference unpacks exactly two parts; zero or several markers both fail.
        return ParsedTeacher(SINGLE_SPACE, SINGLE_SPACE, _marker_failure(parts))
    rationale = parts[0].rstrip()
    match = _EQUATION_SPAN.search(parts[1])
    if match is None:
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_EQUATION)
    return ParsedTeacher(rationale, match.group(0), OK)


def parse_svamp(completion: str) -> ParsedTeacher:
    """SVAMP (and the embedded `arith`): `... The answer is (84 / 2).` -> `(84 / 2)`."""
    return _svamp_from_kept(_cut_continuation(completion, "Q:"))


def parse_svamp_gpt(completion: str) -> ParsedTeacher:
    """SVAMP, GPT-NeoX rule: as PaLM's, with leading whitespace stripped too."""
    return _svamp_from_kept(completion.split("Q:")[0].strip())


def _esnli_label(rationale: str, completion: str) -> ParsedTeacher:
    parts = completion.split("Answer: ")
    if len(parts) < 2:
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_ANSWER_MARKER)
    label = parts[1].split("Premise")[0].rstrip()
    return ParsedTeacher(rationale, label, OK if label else EMPTY_LABEL)


def parse_esnli(completion: str) -> ParsedTeacher:
    """e-SNLI: `<rationale>\\nAnswer: neutral\\n\\nPremise: ...` -> `neutral`."""
    return _esnli_label(completion.split("Answer:")[0].rstrip(), completion)


def parse_esnli_gpt(completion: str) -> ParsedTeacher:
    """e-SNLI, GPT-NeoX rule: the rationale is stripped on both sides."""
    return _esnli_label(completion.split("Answer:")[0].strip(), completion)


def _anli1_from_parts(parts: List[str]) -> ParsedTeacher:
    rationale = parts[0].rstrip()
    label = parts[1].lstrip()[:-1]  # drops the last character, the full stop
    return ParsedTeacher(rationale, label, OK if label else EMPTY_LABEL)


def parse_anli1(completion: str) -> ParsedTeacher:
    """ANLI round 1: `... So the answer is contradiction.\\n\\nPremise: ...`."""
    kept = _cut_continuation(completion, "Premise:")
    parts = kept.split("So the answer is")
    if len(parts) != 2:
        return ParsedTeacher("", "", _marker_failure(parts))
    return _anli1_from_parts(parts)


def parse_anli1_gpt(completion: str) -> ParsedTeacher:
    """ANLI round 1, GPT-NeoX rule: stripped; `So the answer is`, else `The answer is`."""
    kept = completion.split("Premise:")[0].strip()
    parts = kept.split("So the answer is")
    if len(parts) != 2:
        parts = kept.split("The answer is")
    if len(parts) != 2:
        return ParsedTeacher("", "", _marker_failure(parts))
    return _anli1_from_parts(parts)


PARSERS: Dict[str, Callable[[str], ParsedTeacher]] = {
    "cqa": parse_cqa,
    "svamp": parse_svamp,
    "esnli": parse_esnli,
    "anli1": parse_anli1,
    "arith": parse_svamp,
    "asdiv": parse_svamp,
}

# The reference's `_parse_gpt_output` rules (it has none for ASDiv; arith follows SVAMP).
GPT_PARSERS: Dict[str, Callable[[str], ParsedTeacher]] = {
    "cqa": parse_cqa_gpt,
    "svamp": parse_svamp_gpt,
    "esnli": parse_esnli_gpt,
    "anli1": parse_anli1_gpt,
    "arith": parse_svamp_gpt,
}

PALM = "palm"
GPT = "gpt"
LLMS = (PALM, GPT)
_PARSERS_BY_LLM = {PALM: PARSERS, GPT: GPT_PARSERS}

# What each parser returns when it has nothing to work with.
_FAILURE_DEFAULTS = {
    "cqa": (SINGLE_SPACE, SINGLE_SPACE),
    "svamp": (SINGLE_SPACE, SINGLE_SPACE),
    "arith": (SINGLE_SPACE, SINGLE_SPACE),
    "asdiv": (SINGLE_SPACE, SINGLE_SPACE),
    "esnli": (SINGLE_SPACE, SINGLE_SPACE),
    "anli1": ("", ""),
}


def check_llm(llm: str) -> str:
    """`llm` if it is a known teacher (`palm`, `gpt`), else a ValueError naming the choices."""
    if llm not in LLMS:
        raise ValueError(f"unknown teacher llm {llm!r}; use one of {', '.join(LLMS)}")
    return llm


def parser_for(benchmark: str, llm: str = PALM) -> Callable[[str], ParsedTeacher]:
    """The parse rule of `benchmark`'s completions from teacher `llm`."""
    parsers = _PARSERS_BY_LLM[check_llm(llm)]
    if benchmark not in parsers:
        raise ValueError(
            f"unknown benchmark {benchmark!r} for teacher {llm!r}; known: {', '.join(sorted(parsers))}"
        )
    return parsers[benchmark]


def parse_teacher_output(benchmark: str, completion: Any, llm: str = PALM) -> ParsedTeacher:
    """Splits one teacher completion of `benchmark` into rationale and label.

    Never raises for a known benchmark, whatever `completion` is: a non-string gives
    status `not_a_string` (with the benchmark's failure rationale/label), a blank one
    status `empty` (with what the reference code produces for it). An unknown benchmark
    or llm is a ValueError (a programming error, not bad data). `llm` picks PaLM's or
    GPT-NeoX's rules.
    """
    parser = parser_for(benchmark, llm)
    rationale, label = _FAILURE_DEFAULTS[benchmark]
    if not isinstance(completion, str):
        return ParsedTeacher(rationale, label, NOT_A_STRING)
    parsed = parser(completion)
    if not completion.strip():
        return dataclasses.replace(parsed, status=EMPTY)
    return parsed
