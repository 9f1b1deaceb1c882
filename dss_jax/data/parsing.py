"""Teacher-output parsing: split a teacher LLM completion into (rationale, label).

One parser per benchmark, each reproducing the reference code of Hsieh et al. 2023
(`data_utils.py` of google-research/distilling-step-by-step, as specified in
`docs/METHOD.md`), including what it produces when parsing fails (a single space, or
empty strings for anli1). Where the reference code would crash instead (cqa without
`So the answer is`), we return the left part of the split as the rationale and a single
space as the label, and say so in `status`.

`parse_teacher_output` never raises on any input; `status` is `"ok"` or the kind of
failure, so callers can count failures instead of dropping rows silently.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict

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


def parse_cqa(completion: str) -> ParsedTeacher:
    """CommonsenseQA: `... So the answer is (d) math problem.` -> label `math problem`."""
    kept = _cut_continuation(completion, "Q:")
    parts = kept.split("So the answer is", 1)
    rationale = parts[0].rstrip()
    if len(parts) == 1:
        # The reference code raises here; we keep the text as rationale and count it.
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_ANSWER_MARKER)
    after_choice = _CQA_CHOICE_MARKER.split(parts[1])
    if len(after_choice) < 2:
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_CHOICE_MARKER)
    label = after_choice[1].strip()
    if not label:
        return ParsedTeacher(rationale, SINGLE_SPACE, EMPTY_LABEL)
    if label.endswith("."):
        label = label[:-1]
    status = OK if label else EMPTY_LABEL
    return ParsedTeacher(rationale, label, status)


def parse_svamp(completion: str) -> ParsedTeacher:
    """SVAMP (and the embedded `arith`): `... The answer is (84 / 2).` -> `(84 / 2)`."""
    kept = _cut_continuation(completion, "Q:")
    parts = kept.split("The answer is")
    if len(parts) != 2:
        # The reference unpacks exactly two parts; zero or several markers both fail.
        status = NO_ANSWER_MARKER if len(parts) == 1 else MULTIPLE_ANSWER_MARKERS
        return ParsedTeacher(SINGLE_SPACE, SINGLE_SPACE, status)
    rationale = parts[0].rstrip()
    match = _EQUATION_SPAN.search(parts[1])
    if match is None:
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_EQUATION)
    return ParsedTeacher(rationale, match.group(0), OK)


def parse_esnli(completion: str) -> ParsedTeacher:
    """e-SNLI: `<rationale>\\nAnswer: neutral\\n\\nPremise: ...` -> `neutral`."""
    rationale = completion.split("Answer:")[0].rstrip()
    parts = completion.split("Answer: ")
    if len(parts) < 2:
        return ParsedTeacher(rationale, SINGLE_SPACE, NO_ANSWER_MARKER)
    label = parts[1].split("Premise")[0].rstrip()
    return ParsedTeacher(rationale, label, OK if label else EMPTY_LABEL)


def parse_anli1(completion: str) -> ParsedTeacher:
    """ANLI round 1: `... So the answer is contradiction.\\n\\nPremise: ...`."""
    kept = _cut_continuation(completion, "Premise:")
    parts = kept.split("So the answer is")
    if len(parts) != 2:
        status = NO_ANSWER_MARKER if len(parts) == 1 else MULTIPLE_ANSWER_MARKERS
        return ParsedTeacher("", "", status)
    rationale = parts[0].rstrip()
    label = parts[1].lstrip()[:-1]  # drops the last character, the full stop
    return ParsedTeacher(rationale, label, OK if label else EMPTY_LABEL)


PARSERS: Dict[str, Callable[[str], ParsedTeacher]] = {
    "cqa": parse_cqa,
    "svamp": parse_svamp,
    "esnli": parse_esnli,
    "anli1": parse_anli1,
    "arith": parse_svamp,
}

# What each parser returns when it has nothing to work with.
_FAILURE_DEFAULTS = {
    "cqa": (SINGLE_SPACE, SINGLE_SPACE),
    "svamp": (SINGLE_SPACE, SINGLE_SPACE),
    "arith": (SINGLE_SPACE, SINGLE_SPACE),
    "esnli": (SINGLE_SPACE, SINGLE_SPACE),
    "anli1": ("", ""),
}


def parse_teacher_output(benchmark: str, completion: Any) -> ParsedTeacher:
    """Splits one teacher completion of `benchmark` into rationale and label.

    Never raises for a known benchmark, whatever `completion` is: a non-string gives
    status `not_a_string` (with the benchmark's failure rationale/label), a blank one
    status `empty` (with what the reference code produces for it). An unknown benchmark is a ValueError
    (a programming error, not bad data).
    """
    if benchmark not in PARSERS:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; known: {', '.join(sorted(PARSERS))}"
        )
    rationale, label = _FAILURE_DEFAULTS[benchmark]
    if not isinstance(completion, str):
        return ParsedTeacher(rationale, label, NOT_A_STRING)
    parsed = PARSERS[benchmark](completion)
    if not completion.strip():
        return dataclasses.replace(parsed, status=EMPTY)
    return parsed
