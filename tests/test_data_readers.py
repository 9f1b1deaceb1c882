"""Readers of the datasets.zip layout: inputs, labels, splits, and loud failures."""
import json
import shutil

import numpy as np
import pytest

from dss_jax.data import readers
from dss_jax.data.readers import DataFileMissingError, TeacherOutputCountError, load_split


def test_cqa_input_lists_the_five_lettered_choices(dss_data_dir):
    example = load_split("cqa", "test", dss_data_dir).examples[0]
    assert example.input == (
        "A beaver is know for building prowess, their supplies come from where?\n"
        "Answer Choices:\n(a) british columbia\n(b) body of water\n(c) wooded area\n"
        "(d) pay debts\n(e) zoo"
    )
    assert example.input_segments == (example.input,)
    assert example.gold_label == "wooded area"


def test_svamp_input_is_body_newline_question_and_gold_is_equation(dss_data_dir):
    example = load_split("svamp", "test", dss_data_dir).examples[0]
    assert example.input.endswith("If there are 45 flowerbeds\nHow many seeds did they plant?")
    assert example.gold_label == "( 10.0 * 45.0 )"


def test_nli_input_keeps_premise_and_hypothesis_as_two_segments(dss_data_dir):
    example = load_split("esnli", "validation", dss_data_dir).examples[0]
    assert example.input_segments == (
        "Two women are embracing while holding to go packages.",
        "The sisters are hugging goodbye while holding to go packages after just eating lunch.",
    )
    assert example.input == "</s>".join(example.input_segments)
    assert example.gold_label == "neutral"


def test_nli_labels_become_words(dss_data_dir):
    labels = {e.gold_label for e in load_split("anli1", "test", dss_data_dir).examples}
    assert labels == {"entailment", "neutral", "contradiction"}


def test_teacher_fields_come_from_the_parser(dss_data_dir):
    example = load_split("svamp", "test", dss_data_dir).examples[0]
    assert (example.teacher_label, example.parse_status) == ("(10 * 45)", "ok")


def test_cqa_train_carves_ten_percent_validation_disjointly(dss_data_dir):
    train = load_split("cqa", "train", dss_data_dir)
    validation = load_split("cqa", "validation", dss_data_dir)
    train_ids = {e.example_id for e in train.examples}
    validation_ids = {e.example_id for e in validation.examples}
    assert (len(train_ids), len(validation_ids)) == (8766, 975)  # ceil(0.1 * 9741) = 975
    assert train_ids.isdisjoint(validation_ids)
    assert train_ids | validation_ids == set(range(9741))
    assert train.report.rows == 9741


def test_validation_carve_matches_datasets_train_test_split_seed_0(dss_data_dir):
    # datasets.Dataset.train_test_split(test_size=0.1, seed=0): n_test = ceil(0.1 * n),
    # permutation = np.random.default_rng(seed).permutation(n), test = permutation[:n_test].
    validation = load_split("cqa", "validation", dss_data_dir).examples
    expected = np.random.default_rng(0).permutation(9741)[:975].tolist()
    assert [e.example_id for e in validation] == expected


def test_svamp_split_sizes(dss_data_dir):
    sizes = [len(load_split("svamp", s, dss_data_dir).examples) for s in readers.SPLITS]
    assert sizes == [720, 80, 200]


def test_training_fraction_subsamples_before_validation_carve(dss_data_dir):
    half_train = load_split("cqa", "train", dss_data_dir, fraction=0.5, seed=1).examples
    half_valid = load_split("cqa", "validation", dss_data_dir, fraction=0.5, seed=1).examples
    assert (len(half_train), len(half_valid)) == (4383, 487)  # 4870 kept rows, then 10 %
    kept = set(np.random.default_rng(1).permutation(9741)[4871:].tolist())
    assert {e.example_id for e in half_train} | {e.example_id for e in half_valid} == kept


def test_training_fraction_depends_on_seed(dss_data_dir):
    seed_0 = {e.example_id for e in load_split("svamp", "train", dss_data_dir, 0.25, seed=0).examples}
    seed_1 = {e.example_id for e in load_split("svamp", "train", dss_data_dir, 0.25, seed=1).examples}
    assert len(seed_0) == len(seed_1) == 180  # 200 kept rows, then 10 % validation
    assert seed_0 != seed_1


def test_split_indices_are_a_seeded_permutation():
    train, test = readers.train_test_split_indices(10, 0.25, seed=3)
    assert len(test) == 3 and len(train) == 7
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(10))
    again, _ = readers.train_test_split_indices(10, 0.25, seed=3)
    assert train.tolist() == again.tolist()


@pytest.mark.parametrize("benchmark", ["esnli", "anli1"])
def test_missing_nli_train_split_is_a_named_error(dss_data_dir, benchmark):
    if (dss_data_dir / benchmark / f"{benchmark}_train.json").exists():
        pytest.skip("this data dir has the full datasets.zip")
    with pytest.raises(DataFileMissingError) as error:
        load_split(benchmark, "train", dss_data_dir)
    message = str(error.value)
    assert f"{benchmark}_train.json" in message
    assert "DSS_DATA_DIR" in message and "datasets.zip" in message


def test_no_data_dir_is_a_named_error(monkeypatch):
    monkeypatch.delenv("DSS_DATA_DIR", raising=False)
    with pytest.raises(DataFileMissingError, match="DSS_DATA_DIR"):
        load_split("cqa", "test")


def test_data_dir_comes_from_environment(monkeypatch, dss_data_dir):
    monkeypatch.setenv("DSS_DATA_DIR", str(dss_data_dir))
    assert len(load_split("svamp", "test").examples) == 200


def _tiny_svamp(tmp_path, rows, completions_per_file):
    root = tmp_path / "data"
    (root / "svamp" / "llm").mkdir(parents=True)
    with open(root / "svamp" / "svamp_test.json", "w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"input": f"q{i}", "label": f"( {i}.0 + 1.0 )"}) + "\n")
    for index, completions in enumerate(completions_per_file):
        with open(root / "svamp" / "llm" / f"test_CoT_{index}.json", "w") as handle:
            json.dump(completions, handle)
    return root


def test_more_teacher_outputs_than_rows_is_an_error(tmp_path):
    root = _tiny_svamp(tmp_path, 3, [["The answer is (1)."] * 4])
    with pytest.raises(TeacherOutputCountError, match="3 rows but 4 teacher completions"):
        load_split("svamp", "test", root)


def test_more_teacher_outputs_than_rows_is_counted_when_lenient(tmp_path):
    root = _tiny_svamp(tmp_path, 3, [["The answer is (1)."] * 4])
    data = load_split("svamp", "test", root, strict=False)
    assert len(data.examples) == 3
    assert data.report.extra_teacher_outputs == 1


def test_fewer_teacher_outputs_than_rows_is_counted_per_row_when_lenient(tmp_path):
    root = _tiny_svamp(tmp_path, 3, [["The answer is (1)."] * 2])
    with pytest.raises(TeacherOutputCountError):
        load_split("svamp", "test", root)
    data = load_split("svamp", "test", root, strict=False)
    assert [e.parse_status for e in data.examples] == ["ok", "ok", "missing_teacher_output"]
    assert data.report.missing_teacher_outputs == 1


def test_teacher_file_with_wrong_block_size_breaks_alignment_loudly(tmp_path):
    # B = 500 for svamp: a first file of 2 completions followed by another cannot align.
    root = _tiny_svamp(tmp_path, 3, [["The answer is (1)."] * 2, ["The answer is (2)."]])
    with pytest.raises(TeacherOutputCountError, match="must hold 500"):
        load_split("svamp", "test", root, strict=False)


def test_missing_teacher_file_names_the_file(tmp_path):
    root = _tiny_svamp(tmp_path, 3, [])
    with pytest.raises(DataFileMissingError, match="test_CoT_0.json"):
        load_split("svamp", "test", root)


def test_bad_nli_label_names_file_and_row(tmp_path, dss_data_dir):
    root = tmp_path / "data"
    shutil.copytree(dss_data_dir / "anli1" / "llm", root / "anli1" / "llm")
    rows = (dss_data_dir / "anli1" / "anli1_test.json").read_text().splitlines()
    bad = json.loads(rows[5])
    bad["label"] = 7
    rows[5] = json.dumps(bad)
    (root / "anli1" / "anli1_test.json").write_text("\n".join(rows) + "\n")
    with pytest.raises(readers.BadRowError, match=r"anli1_test.json row 5: NLI label must be 0, 1 or 2"):
        load_split("anli1", "test", root)
