"""ASDiv (Miao et al. 2020), the paper's augmentation data for SVAMP: its XML file format.

`ASDiv.xml` (github.com/chaochun/nlu-asdiv-dataset) holds
`<Machine-Reading-Corpus-File><ProblemSet><Problem ID=.. Grade=.. Source=..>` elements,
each with `Body`, `Question`, `Solution-Type`, `Answer` (`9 (apples)`) and `Formula`
(`7+2=9`). `read_asdiv_xml` reads them; `write_rows` turns them into training rows for
the teacher step and the readers:

- layout `svamp` (default): `<data_dir>/svamp/svamp_<split>.json`, SVAMP's row format
  (`input` = `Body\\nQuestion`, as the reference builds ASDiv inputs), so that
  `python -m dss_jax.teacher --benchmark svamp --split <split>` annotates them and the
  tasks read them as the extra source `svamp:<split>`;
- layout `asdiv`: `<data_dir>/asdiv/asdiv_<split>.json` with the reference code's fields
  (`Body`, `Question`, `Formula`, `Answer`), read as the extra source `asdiv:<split>`.

The rows are unlabeled for training (the teacher labels them). In the svamp layout a row
keeps ASDiv's fields as `asdiv_id`, `asdiv_answer`, `asdiv_formula`, and gets a `label`
only when the reference's label (the answer without its unit) is a number, so the strict
label check holds and the teacher step counts the others as unlabeled rows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import xml.etree.ElementTree as ElementTree
from typing import Dict, List

from dss_jax.data import arithmetic, readers

LAYOUTS = ("svamp", "asdiv")
REQUIRED_FIELDS = ("Body", "Question")


@dataclasses.dataclass(frozen=True)
class AsdivProblem:
    """One `<Problem>` of ASDiv.xml (text fields stripped; absent optional fields are '')."""

    problem_id: str
    grade: str
    body: str
    question: str
    solution_type: str
    answer: str
    formula: str

    @property
    def input(self) -> str:
        """The model input as the reference builds it: `Body\\nQuestion`."""
        return f"{self.body}\n{self.question}"


def _text(problem: ElementTree.Element, tag: str) -> str:
    element = problem.find(tag)
    return "" if element is None or element.text is None else element.text.strip()


def _problem(element: ElementTree.Element, where: str) -> AsdivProblem:
    for tag in REQUIRED_FIELDS:
        if not _text(element, tag):
            raise readers.BadRowError(f"{where}: <Problem> has no <{tag}> text")
    return AsdivProblem(
        problem_id=element.get("ID", ""),
        grade=element.get("Grade", ""),
        body=_text(element, "Body"),
        question=_text(element, "Question"),
        solution_type=_text(element, "Solution-Type"),
        answer=_text(element, "Answer"),
        formula=_text(element, "Formula"),
    )


def read_asdiv_xml(path: os.PathLike) -> List[AsdivProblem]:
    """Every `<Problem>` of an ASDiv.xml file, in file order (clear errors naming the file)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise readers.DataFileMissingError(
            f"{path} not found: the ASDiv XML file (ASDiv.xml of github.com/chaochun/nlu-asdiv-dataset)"
        )
    try:
        root = ElementTree.fromstring(readers.read_text(path))
    except ElementTree.ParseError as error:
        raise readers.BadRowError(f"{path}: not valid XML ({error}); the file is truncated or damaged") from None
    problems = root.findall("./ProblemSet/Problem") or root.findall(".//Problem")
    if not problems:
        raise readers.EmptySplitError(f"{path}: no <Problem> elements (expected ProblemSet/Problem)")
    return [
        _problem(element, f"{path} problem {index} (ID {element.get('ID', '?')})")
        for index, element in enumerate(problems)
    ]


def svamp_row(problem: AsdivProblem) -> Dict[str, str]:
    """A row in SVAMP's format; `label` only when the answer (unit dropped) is a number."""
    # `answer` would mark the row as labeled for the teacher step: ASDiv's fields keep a prefix.
    row = {"input": problem.input, "asdiv_id": problem.problem_id, "asdiv_answer": problem.answer,
           "asdiv_formula": problem.formula}
    label = readers.asdiv_answer(problem.answer)
    if arithmetic.evaluate_equation(label) is not None:
        row["label"] = label
    return row


def reference_row(problem: AsdivProblem) -> Dict[str, str]:
    """A row in the reference code's ASDiv format (`asdiv/asdiv_train.json`)."""
    return {"Body": problem.body, "Question": problem.question, "Formula": problem.formula, "Answer": problem.answer}


def write_rows(
    xml_path: os.PathLike, data_dir: os.PathLike, split: str = "asdiv", layout: str = "svamp"
) -> pathlib.Path:
    """Writes ASDiv.xml's problems as JSON-lines rows (see the module docstring); returns the file."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not split.isalnum():
        raise ValueError(f"split must be letters and digits (it becomes a file name), got {split!r}")
    problems = read_asdiv_xml(xml_path)
    to_row = svamp_row if layout == "svamp" else reference_row
    path = readers.rows_path(pathlib.Path(data_dir), layout, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for problem in problems:
            handle.write(json.dumps(to_row(problem), ensure_ascii=False) + "\n")
    return path
