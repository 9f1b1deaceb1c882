"""Start-up validation of every split a run uses: each bad input is one clear error.

A table of corruptions of a small svamp/cqa/anli1 data dir written by the test; each
must give `DataValidationError` naming the damaged file and the data-dir setting.
"""
import json

import pytest
import seqio

import dss_tasks
from dss_jax.data import readers
from dss_jax.data.readers import DataValidationError, validate_benchmark

ROWS = {
    "svamp": lambda i: {"input": f"q{i}", "label": f"( {i}.0 + 1.0 )"},
    "cqa": lambda i: {"question": f"q{i}", "choices": ["a", "b", "c", "d", "e"], "answer": "b"},
    "anli1": lambda i: {"premise": f"p{i}", "hypothesis": "h", "label": i % 3},
}
COMPLETION = {
    "svamp": "1 + 1 = 2. The answer is (1 + 1).",
    "cqa": "Because. So the answer is (b) b.",
    "anli1": "Because. So the answer is neutral.",
}
FILE_SPLITS = {"svamp": ("train", "test"), "cqa": ("train", "test"), "anli1": ("train", "valid", "test")}


def write_benchmark(root, benchmark, rows=10):
    (root / benchmark / "llm").mkdir(parents=True, exist_ok=True)
    for split in FILE_SPLITS[benchmark]:
        with open(root / benchmark / f"{benchmark}_{split}.json", "w") as handle:
            handle.write("".join(json.dumps(ROWS[benchmark](i)) + "\n" for i in range(rows)))
        (root / benchmark / "llm" / f"{split}_CoT_0.json").write_text(json.dumps([COMPLETION[benchmark]] * rows))
    return root


def rows_file(root, benchmark, split):
    return root / benchmark / f"{benchmark}_{split}.json"


def set_row(root, benchmark, split, index, **fields):
    path = rows_file(root, benchmark, split)
    lines = path.read_text().splitlines()
    lines[index] = json.dumps({**json.loads(lines[index]), **fields})
    path.write_text("\n".join(lines) + "\n")


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def with_rows(root, benchmark, split, count):
    path = rows_file(root, benchmark, split)
    path.write_text("".join(json.dumps(ROWS[benchmark](i)) + "\n" for i in range(count)))
    (root / benchmark / "llm" / f"{split}_CoT_0.json").write_text(json.dumps([COMPLETION[benchmark]] * count))


def invalid_utf8(path, line):
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"q", b"\xff\xfeq", 1)
    path.write_bytes(b"\n".join(lines))


# (case, benchmark, corruption(root), text the message must contain)
BAD_INPUTS = [
    ("missing test file", "svamp", lambda r: rows_file(r, "svamp", "test").unlink(), "svamp_test.json not found"),
    ("test file truncated mid-line", "svamp", lambda r: truncate(rows_file(r, "svamp", "test"), 0.55),
     "svamp_test.json:6: not valid JSON"),
    ("test file truncated at a line end", "svamp", lambda r: truncate(rows_file(r, "svamp", "test")),
     "svamp_test.json): 5 rows but 10 teacher completions"),
    ("truncated teacher file", "cqa", lambda r: truncate(r / "cqa" / "llm" / "test_CoT_0.json"),
     "test_CoT_0.json: not valid JSON"),
    ("missing teacher file", "anli1", lambda r: (r / "anli1" / "llm" / "valid_CoT_0.json").unlink(),
     "valid_CoT_0.json not found"),
    ("invalid UTF-8 in rows", "svamp", lambda r: invalid_utf8(rows_file(r, "svamp", "test"), 4),
     "svamp_test.json:4: not valid UTF-8"),
    ("invalid UTF-8 in teacher file", "cqa",
     lambda r: (r / "cqa" / "llm" / "train_CoT_0.json").write_bytes(b'["So \xff the answer"]'),
     "train_CoT_0.json:1: not valid UTF-8"),
    ("empty training file", "svamp", lambda r: with_rows(r, "svamp", "train", 0), "svamp_train.json has no rows"),
    ("one-row training file", "svamp", lambda r: with_rows(r, "svamp", "train", 1), "svamp_train.json has 1 row"),
    ("one-row NLI training file", "anli1", lambda r: with_rows(r, "anli1", "train", 1), "anli1_train.json has 1 row"),
    ("empty test file", "cqa", lambda r: with_rows(r, "cqa", "test", 0), "cqa_test.json has no rows"),
    ("empty validation file", "anli1", lambda r: with_rows(r, "anli1", "valid", 0), "anli1_valid.json has no rows"),
    ("CQA answer not a choice", "cqa", lambda r: set_row(r, "cqa", "test", 3, answer="zebra"),
     "cqa_test.json row 3: answer 'zebra' is not one of the choices"),
    ("svamp label not an equation", "svamp", lambda r: set_row(r, "svamp", "train", 2, label="forty two"),
     "svamp_train.json row 2: label 'forty two' is not an equation"),
    ("svamp label Python-only number", "svamp", lambda r: set_row(r, "svamp", "test", 1, label="1e3"),
     "svamp_test.json row 1: label '1e3' is not an equation"),
    ("NLI label out of range", "anli1", lambda r: set_row(r, "anli1", "test", 5, label=5),
     "anli1_test.json row 5: NLI label must be 0, 1 or 2, got 5"),
    ("row not an object", "svamp", lambda r: rows_file(r, "svamp", "test").write_text('["a"]\n' * 10),
     "expected a JSON object"),
    ("teacher count mismatch", "svamp",
     lambda r: (r / "svamp" / "llm" / "test_CoT_0.json").write_text(json.dumps(["x"] * 3)),
     "10 rows but 3 teacher completions"),
]


@pytest.mark.parametrize("case, benchmark, corrupt, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_clear_error_naming_the_file_and_the_setting(tmp_path, case, benchmark, corrupt, message):
    root = write_benchmark(tmp_path / "data", benchmark)
    validate_benchmark(benchmark, root)  # the intact copy is fine
    corrupt(root)
    with pytest.raises(DataValidationError) as error:
        validate_benchmark(benchmark, root)
    text = str(error.value)
    assert message in text, text
    assert "DSS_DATA_DIR" in text
    assert "Traceback" not in text and "UnicodeDecodeError" not in text


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    root = write_benchmark(tmp_path / "data", "svamp")
    path = rows_file(root, "svamp", "test")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert validate_benchmark("svamp", root)["test"].examples == 10


def test_every_bad_split_is_listed_in_one_error(tmp_path):
    root = write_benchmark(tmp_path / "data", "anli1")
    rows_file(root, "anli1", "test").unlink()
    set_row(root, "anli1", "valid", 1, label=9)
    with pytest.raises(DataValidationError, match="2 of 3 splits") as error:
        validate_benchmark("anli1", root)
    assert "anli1_test.json" in str(error.value) and "anli1_valid.json row 1" in str(error.value)


def test_all_bad_labels_of_a_file_are_counted_in_the_error(tmp_path):
    root = write_benchmark(tmp_path / "data", "cqa")
    for index in (1, 4, 7):
        set_row(root, "cqa", "train", index, answer="nope")
    with pytest.raises(DataValidationError, match="3 of 10 rows have a gold label outside"):
        validate_benchmark("cqa", root, splits=("train",))


def test_skipping_bad_labels_is_counted_not_silent(tmp_path):
    root = write_benchmark(tmp_path / "data", "svamp", rows=20)
    set_row(root, "svamp", "test", 0, label="x")
    checks = validate_benchmark("svamp", root, bad_labels="skip")
    assert (checks["test"].examples, checks["test"].skipped_bad_labels) == (19, 1)


def test_validation_reports_counts_of_every_split(tmp_path):
    root = write_benchmark(tmp_path / "data", "svamp", rows=20)
    checks = validate_benchmark("svamp", root)
    assert {s: (c.examples, c.file_rows) for s, c in checks.items()} == {
        "train": (18, 20), "validation": (2, 20), "test": (20, 20)}
    assert checks["test"].parse_failures == 0


def test_real_cqa_data_passes_with_its_counts(dss_data_dir):
    checks = validate_benchmark("cqa", dss_data_dir)
    assert [checks[s].examples for s in readers.SPLITS] == [8766, 975, 1221]
    assert checks["train"].parse_failures == 3


def test_validate_task_finds_a_mixtures_data_and_names_the_missing_file(monkeypatch, dss_data_dir):
    monkeypatch.setenv("DSS_DATA_DIR", str(dss_data_dir))
    assert dss_tasks.validate_task("dss_svamp_mix_gold_lambda1", splits=("test",))["test"].examples == 200
    if (dss_data_dir / "esnli" / "esnli_train.json").exists():
        pytest.skip("this data dir has the full datasets.zip")
    with pytest.raises(DataValidationError, match="esnli_train.json not found"):
        dss_tasks.validate_task("dss_esnli_paired_teacher")


def test_empty_split_file_is_a_clear_error_when_a_task_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DSS_VOCAB", "embedded")
    root = write_benchmark(tmp_path / "data", "svamp")
    with_rows(root, "svamp", "test", 0)
    dss_tasks.set_data_dir(root)
    try:
        task = seqio.get_mixture_or_task("dss_svamp_label_gold")
        with pytest.raises(readers.EmptySplitError, match="svamp_test.json has no rows"):
            task.get_dataset({"inputs": 32, "targets": 32}, split="test", shuffle=False)
    finally:
        dss_tasks.set_data_dir(None)


def test_validate_command_prints_counts_or_the_error(tmp_path, capsys):
    from dss_jax.data.__main__ import main

    root = write_benchmark(tmp_path / "data", "svamp", rows=20)
    assert main(["validate", "--benchmark", "svamp", "--data_dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["examples"] == 20
    rows_file(root, "svamp", "test").unlink()
    assert main(["validate", "--benchmark", "svamp", "--data_dir", str(root)]) == 2
    assert "svamp_test.json not found" in capsys.readouterr().err


def test_is_dss_task_tells_dss_tasks_from_others():
    assert dss_tasks.is_dss_task("dss_cqa_mix_gold_lambda1") and dss_tasks.is_dss_task("dss_arith_label_gold")
    assert not dss_tasks.is_dss_task("no_such_task")
