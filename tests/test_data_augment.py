"""Augmentation with unlabeled data (paper section 4.2): ASDiv's XML format and extra sources."""
import json

import pytest
import seqio

import dss_tasks
from dss_jax.data import asdiv, readers
from dss_jax.data.__main__ import main
from dss_jax.teacher.benchmarks import get_benchmark
from dss_jax.teacher.runner import write_completion_files

ASDIV_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Machine-Reading-Corpus-File>
  <ProblemSet>
    <Problem ID="nluds-0001" Grade="1" Source="http://www.k5learning.com">
      <Body>Seven red apples and two green apples are in the basket.</Body>
      <Question>How many apples are in the basket?</Question>
      <Solution-Type>Addition</Solution-Type>
      <Answer>9 (apples)</Answer>
      <Formula>7+2=9</Formula>
    </Problem>
    <Problem ID="nluds-0002" Grade="3" Source="http://www.k5learning.com">
      <Body>
        A ratio of boys to girls is given.
      </Body>
      <Question>What is the ratio?</Question>
      <Solution-Type>Ratio</Solution-Type>
      <Answer>3:2</Answer>
      <Formula>3:2</Formula>
    </Problem>
    <Problem ID="nluds-0003" Grade="2" Source="x">
      <Body>Tom had 12 cards and gave away 5.</Body>
      <Question>How many cards are left?</Question>
      <Answer>7 (cards)</Answer>
      <Formula>12-5=7</Formula>
    </Problem>
  </ProblemSet>
</Machine-Reading-Corpus-File>
"""


def _xml(tmp_path, text=ASDIV_XML):
    path = tmp_path / "ASDiv.xml"
    path.write_text(text, encoding="utf-8")
    return path


def test_asdiv_xml_reader_reads_every_problem_with_its_fields(tmp_path):
    problems = asdiv.read_asdiv_xml(_xml(tmp_path))
    assert [p.problem_id for p in problems] == ["nluds-0001", "nluds-0002", "nluds-0003"]
    first = problems[0]
    assert (first.grade, first.solution_type, first.answer, first.formula) == ("1", "Addition", "9 (apples)", "7+2=9")
    assert first.input == "Seven red apples and two green apples are in the basket.\nHow many apples are in the basket?"
    assert problems[1].body == "A ratio of boys to girls is given."  # surrounding whitespace stripped
    assert problems[2].solution_type == ""


def test_asdiv_rows_in_svamp_layout_carry_a_label_only_when_the_answer_is_a_number(tmp_path):
    path = asdiv.write_rows(_xml(tmp_path), tmp_path / "data", split="asdiv")
    assert path == tmp_path / "data" / "svamp" / "svamp_asdiv.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["input"].endswith("basket.\nHow many apples are in the basket?") and rows[0]["label"] == "9"
    assert "label" not in rows[1] and rows[1]["asdiv_answer"] == "3:2"


def test_asdiv_rows_are_readable_by_the_teacher_step_as_svamp_rows(tmp_path):
    asdiv.write_rows(_xml(tmp_path), tmp_path / "data", split="asdiv")
    teacher = get_benchmark("svamp")
    rows = teacher.read_rows(tmp_path / "data", "asdiv")
    assert teacher.prompt_fields(rows[0], "row 0")["problem"].startswith("Seven red apples")
    assert [teacher.gold_label(row, "row") for row in rows] == ["9", None, "7"]  # 3:2 is unlabeled


def test_asdiv_rows_in_the_reference_layout_keep_its_fields(tmp_path):
    path = asdiv.write_rows(_xml(tmp_path), tmp_path / "data", split="train", layout="asdiv")
    assert path == tmp_path / "data" / "asdiv" / "asdiv_train.json"
    assert json.loads(path.read_text().splitlines()[0]) == {
        "Body": "Seven red apples and two green apples are in the basket.",
        "Question": "How many apples are in the basket?", "Formula": "7+2=9", "Answer": "9 (apples)"}


@pytest.mark.parametrize("text, message", [
    (ASDIV_XML[:300], "not valid XML"),
    ("<Machine-Reading-Corpus-File><ProblemSet/></Machine-Reading-Corpus-File>", "no <Problem> elements"),
    (ASDIV_XML.replace("<Question>How many apples are in the basket?</Question>", ""),
     r"problem 0 \(ID nluds-0001\): <Problem> has no <Question> text"),
])
def test_bad_asdiv_xml_is_a_clear_error_naming_the_file(tmp_path, text, message):
    with pytest.raises(readers.BadRowError, match=message) as error:
        asdiv.read_asdiv_xml(_xml(tmp_path, text))
    assert "ASDiv.xml" in str(error.value)


def test_asdiv_command_writes_rows_and_says_how_to_annotate_them(tmp_path, capsys):
    assert main(["asdiv", "--xml", str(_xml(tmp_path)), "--data_dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "--benchmark svamp --split asdiv" in out and "svamp:asdiv" in out
    assert main(["asdiv", "--xml", str(tmp_path / "missing.xml"), "--data_dir", str(tmp_path / "d")]) == 2


# --- a training set made of several sources -----------------------------------------------

def _svamp_with_asdiv(tmp_path):
    """svamp: 20 train rows, 4 test rows (PaLM outputs), and the 3 ASDiv problems as the
    extra split `asdiv` with teacher completions in the teacher step's output files."""
    root = tmp_path / "data"
    (root / "svamp" / "llm").mkdir(parents=True)
    for split, rows in (("train", 20), ("test", 4)):
        with open(root / "svamp" / f"svamp_{split}.json", "w") as handle:
            for i in range(rows):
                handle.write(json.dumps({"input": f"{split} q{i}", "label": f"( {i}.0 + 1.0 )"}) + "\n")
        with open(root / "svamp" / "llm" / f"{split}_CoT_0.json", "w") as handle:
            json.dump([f"{i} + 1 = {i + 1}. The answer is ({i} + 1)." for i in range(rows)], handle)
    asdiv.write_rows(_xml(tmp_path), root, split="asdiv")
    completions = ["7 + 2 = 9. The answer is (7 + 2).", "I am not sure.", "12 - 5 = 7. The answer is (12 - 5)."]
    # written by the teacher step's own writer, as `--benchmark svamp --split asdiv` does
    paths = write_completion_files(root, "svamp", "asdiv", completions, get_benchmark("svamp").rows_per_file)
    assert paths == [root / "svamp" / "llm" / "asdiv_CoT_0.json"]
    return root


def test_extra_source_rows_join_the_training_split_only_with_teacher_labels(tmp_path):
    root = _svamp_with_asdiv(tmp_path)
    train = readers.load_split("svamp", "train", root, extra_sources=["svamp:asdiv"])
    plain = readers.load_split("svamp", "train", root)
    extra = train.examples[len(plain.examples):]
    assert train.examples[:len(plain.examples)] == plain.examples
    assert [(e.example_id, e.gold_label, e.teacher_label) for e in extra] == [
        (20, "(7 + 2)", "(7 + 2)"), (22, "(12 - 5)", "(12 - 5)")]  # ids continue after the 20 file rows
    assert (train.report.extra_source_rows, train.report.skipped_extra_rows) == (2, 1)  # one did not parse
    for split in ("validation", "test"):
        assert readers.load_split("svamp", split, root, extra_sources=["svamp:asdiv"]).examples == \
            readers.load_split("svamp", split, root).examples


def test_extra_source_in_the_reference_asdiv_layout_is_read_too(tmp_path):
    root = _svamp_with_asdiv(tmp_path)
    asdiv.write_rows(_xml(tmp_path), root, split="train", layout="asdiv")
    (root / "asdiv" / "llm").mkdir()
    (root / "asdiv" / "llm" / "train_CoT_0.json").write_text(json.dumps(["The answer is (7 + 2)."] * 3))
    train = readers.load_split("svamp", "train", root, extra_sources=[readers.ExtraSource("asdiv", "train")])
    assert [e.input for e in train.examples[-3:]][0].startswith("Seven red apples")
    assert train.report.extra_source_rows == 3


@pytest.mark.parametrize("source, message", [
    ("svamp", "must be 'benchmark:split'"),
    ("svamp:../x", "letters and digits"),
    ("cqa:train", "not built like svamp's"),
    ("gsm8k:train", "unknown benchmark"),
    ("asdiv:train:gpt", "unknown benchmark 'asdiv' for teacher 'gpt'"),
])
def test_bad_extra_source_is_a_clear_error(source, message):
    with pytest.raises(ValueError, match=message):
        readers.check_extra_sources("svamp", [source])


def test_missing_teacher_outputs_of_an_extra_source_name_the_file(tmp_path):
    root = _svamp_with_asdiv(tmp_path)
    (root / "svamp" / "llm" / "asdiv_CoT_0.json").unlink()
    with pytest.raises(readers.DataFileMissingError, match="asdiv_CoT_0.json"):
        readers.load_split("svamp", "train", root, extra_sources=["svamp:asdiv"])


def test_augmented_tasks_have_their_own_names_and_train_on_the_extra_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("DSS_VOCAB", "embedded")
    name = dss_tasks.register_dss("svamp", 1.0, "gold", extra_sources=["svamp:asdiv"])
    assert name == "dss_svamp_mix_gold_lambda1_aug_asdiv"
    assert dss_tasks.task_name("svamp", "label", "teacher", 0.5, 0, "gpt", ["asdiv:train"]) == \
        "dss_svamp_label_teacher_gpt_aug_asdiv_train_frac50"
    dss_tasks.set_data_dir(_svamp_with_asdiv(tmp_path))
    try:
        task = seqio.get_mixture_or_task("dss_svamp_label_gold_aug_asdiv")
        ids = {split: [int(ex["example_id"]) for ex in task.get_dataset(
            {"inputs": 64, "targets": 32}, split=split, shuffle=False).as_numpy_iterator()]
            for split in ("train", "validation", "test")}
    finally:
        dss_tasks.set_data_dir(None)
    assert sorted(ids["train"])[-2:] == [20, 22] and len(ids["train"]) == 18 + 2  # 2 of 20 rows to validation
    assert max(ids["validation"]) < 20 and len(ids["validation"]) == 2
    assert ids["test"] == [0, 1, 2, 3]
