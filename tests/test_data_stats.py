"""`python -m dss_jax.data stats`: counts that agree with an independent recount."""
import json
import re
import subprocess
import sys

import pytest

from dss_jax.data import stats
from dss_jax.data.__main__ import main


def _independent_cqa_test_accuracy(data_dir):
    """Recount written from the file formats alone, without dss_jax's readers or parsers."""
    gold = [json.loads(line)["answer"] for line in open(data_dir / "cqa" / "cqa_test.json")]
    completions = []
    for index in (0, 1):
        completions += json.load(open(data_dir / "cqa" / "llm" / f"test_CoT_{index}.json"))
    right = 0
    for answer, completion in zip(gold, completions):
        before_next_question = completion.split("Q:")[0].rstrip()
        match = re.search(r"So the answer is[^(]*\([a-e]\)\s*(.*)$", before_next_question)
        if match and match.group(1).strip().removesuffix(".") == answer:
            right += 1
    return len(gold), right / len(gold)


def test_stats_json_agrees_with_independent_cqa_recount(dss_data_dir, capsys):
    assert main(["stats", "--benchmark", "cqa", "--data_dir", str(dss_data_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows, accuracy = _independent_cqa_test_accuracy(dss_data_dir)
    assert result["test"]["rows"] == rows == 1221
    assert result["test"]["teacher_accuracy"] == pytest.approx(accuracy)
    assert result["train"]["rows"] + result["validation"]["rows"] == 9741
    assert result["train"]["parse_failures"]["total"] + result["validation"]["parse_failures"]["total"] == 3


def test_stats_counts_esnli_answerless_completions_and_reports_missing_train(dss_data_dir):
    result = stats.benchmark_stats("esnli", str(dss_data_dir))
    completions = []
    for index in (0, 1):
        completions += json.load(open(dss_data_dir / "esnli" / "llm" / f"valid_CoT_{index}.json"))
    without_answer = sum("Answer: " not in c for c in completions)
    assert result["validation"]["parse_failures"] == {"no_answer_marker": without_answer, "total": without_answer}
    assert result["validation"]["rows"] == 9842
    if not (dss_data_dir / "esnli" / "esnli_train.json").exists():
        assert "esnli_train.json not found" in result["train"]["error"]


def test_stats_equation_accuracy_counts_teacher_equations_by_value(tmp_path):
    data = tmp_path / "data"
    (data / "svamp" / "llm").mkdir(parents=True)
    rows = [("( 84.0 / 2.0 )", "So 42. The answer is (84 / 2)."),
            ("( 3.0 + 4.0 )", "The answer is (3 * 4)."),
            ("( 1.0 + 1.0 )", "no marker")]
    for split in ("train", "test"):
        with open(data / "svamp" / f"svamp_{split}.json", "w") as handle:
            for label, _ in rows * 4:
                handle.write(json.dumps({"input": "q", "label": label}) + "\n")
        json.dump([c for _, c in rows * 4], open(data / "svamp" / "llm" / f"{split}_CoT_0.json", "w"))
    result = stats.benchmark_stats("svamp", str(data))
    assert result["test"]["teacher_accuracy"] == pytest.approx(1 / 3)
    assert result["test"]["parse_failures"] == {"no_answer_marker": 4, "total": 4}
    assert result["train"]["rows"] + result["validation"]["rows"] == 12


def test_stats_command_prints_a_table(dss_data_dir):
    completed = subprocess.run(
        [sys.executable, "-m", "dss_jax.data", "stats", "--benchmark", "svamp", "--data_dir", str(dss_data_dir)],
        capture_output=True, text=True, check=True,
    )
    assert "benchmark svamp" in completed.stdout
    assert re.search(r"test\s+rows\s+200", completed.stdout)
