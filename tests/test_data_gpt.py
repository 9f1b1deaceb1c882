"""GPT-NeoX teacher outputs (the reference's `--llm gpt`): parse rules, file layout, tasks."""
import json

import pytest
import seqio
from hypothesis import given, settings
from hypothesis import strategies as st

import dss_tasks
from dss_jax.data import parsing, readers
from dss_jax.data.parsing import parse_teacher_output
from reference_parsers_support import REFERENCE_GPT

FRAGMENTS = ["So the answer is", "The answer is", "Q:", "Premise:", "Premise", "Answer:", "Answer: ", "(a)",
             "(b) ", "(", ")", ".", " ", "\n", "  x", "(3 + 4)", "neutral."]
completions = st.one_of(st.text(max_size=60),
                        st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=12).map("".join))


@settings(max_examples=300, deadline=None)
@given(benchmark=st.sampled_from(sorted(REFERENCE_GPT)), completion=completions)
def test_fuzz_gpt_parser_matches_the_reference_gpt_rules(benchmark, completion):
    parsed = parse_teacher_output(benchmark, completion, llm="gpt")
    assert (parsed.rationale, parsed.label) == REFERENCE_GPT[benchmark](completion)
    assert parsed.status == "ok" or parsed.status in parsing.FAILURE_KINDS


def test_gpt_rules_strip_leading_whitespace_that_palm_rules_keep():
    completion = "\n  Rivers flow downhill. The answer is (3 + 4).\n\nQ: next"
    assert parse_teacher_output("svamp", completion, llm="gpt").rationale == "Rivers flow downhill."
    assert parse_teacher_output("svamp", completion).rationale == "\n  Rivers flow downhill."


def test_gpt_anli1_falls_back_to_the_answer_is():
    parsed = parse_teacher_output("anli1", " It says so. The answer is neutral.\n\nPremise: x", llm="gpt")
    assert (parsed.rationale, parsed.label, parsed.status) == ("It says so.", "neutral", "ok")
    assert parse_teacher_output("anli1", " It says so. The answer is neutral.").status == "no_answer_marker"


def test_gpt_cqa_without_answer_marker_is_single_spaces():
    parsed = parse_teacher_output("cqa", "  no marker here", llm="gpt")
    assert (parsed.rationale, parsed.label, parsed.status) == (" ", " ", "no_answer_marker")


def test_unknown_llm_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown teacher llm 'gpt4'; use one of palm, gpt"):
        parse_teacher_output("cqa", "x", llm="gpt4")


# --- the reference's file layout: gpt-neox/<benchmark>/<split>.json -----------------------

CQA_ROW = {"question": "Where do fish live?", "choices": ["sea", "sky", "desk", "oven", "car"]}


def _gpt_cqa(tmp_path, train_rows=20, test_rows=3, outputs=None):
    root = tmp_path / "data"
    (root / "cqa").mkdir(parents=True)
    (root / readers.GPT_DIR / "cqa").mkdir(parents=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        with open(root / "cqa" / f"cqa_{split}.json", "w") as handle:
            for i in range(rows):
                handle.write(json.dumps({**CQA_ROW, "id": f"{split}{i}", "answer": "sea"}) + "\n")
        completions = [f"  Fish swim {i}. So the answer is (b) sky.\n\nQ: more" for i in range(rows)]
        with open(root / readers.GPT_DIR / "cqa" / f"{split}.json", "w") as handle:
            json.dump(outputs if outputs is not None else completions, handle)
    return root


def test_gpt_outputs_are_read_from_the_reference_gpt_neox_layout_with_gpt_rules(tmp_path):
    root = _gpt_cqa(tmp_path)
    example = readers.load_split("cqa", "test", root, llm="gpt").examples[0]
    assert (example.teacher_rationale, example.teacher_label, example.gold_label) == ("Fish swim 0.", "sky", "sea")
    assert len(readers.load_split("cqa", "validation", root, llm="gpt").examples) == 2  # ceil(0.1 * 20)


def test_gpt_outputs_without_their_file_name_the_gpt_path(tmp_path):
    root = _gpt_cqa(tmp_path)
    (root / readers.GPT_DIR / "cqa" / "test.json").unlink()
    with pytest.raises(readers.DataFileMissingError, match=r"gpt-neox/cqa/test\.json"):
        readers.load_split("cqa", "test", root, llm="gpt")


def test_gpt_output_count_must_match_the_rows(tmp_path):
    root = _gpt_cqa(tmp_path, outputs=["So the answer is (a) sea."] * 2)
    with pytest.raises(readers.TeacherOutputCountError, match="3 rows but 2 teacher completions"):
        readers.load_split("cqa", "test", root, llm="gpt")


def test_gpt_tasks_have_their_own_names_and_read_gpt_outputs(tmp_path, monkeypatch, bench_spm_model):
    monkeypatch.setenv("DSS_VOCAB", str(bench_spm_model))
    name = dss_tasks.register_task("cqa", "label", "teacher", llm="gpt")
    assert name == "dss_cqa_label_teacher_gpt"
    assert dss_tasks.register_dss("cqa", 1.0, "teacher", llm="gpt") == "dss_cqa_mix_teacher_lambda1_gpt"
    assert "dss_esnli_paired_gold_gpt_frac25" in seqio.TaskRegistry.names()
    dss_tasks.set_data_dir(_gpt_cqa(tmp_path))
    try:
        task = seqio.get_mixture_or_task(name)
        train = next(iter(task.get_dataset({"inputs": 64, "targets": 16}, split="train", shuffle=False)))
        test = next(iter(task.get_dataset({"inputs": 64, "targets": 16}, split="test", shuffle=False)))
    finally:
        dss_tasks.set_data_dir(None)
    assert train["targets_pretokenized"].numpy().decode() == "sky"  # the teacher's label for training
    assert test["targets_pretokenized"].numpy().decode() == "sea"  # gold for evaluation


def test_embedded_benchmark_has_no_gpt_variant():
    with pytest.raises(ValueError, match="llm='palm'"):
        dss_tasks.register_task("arith", "label", "gold", llm="gpt")


def test_stats_command_counts_gpt_outputs(tmp_path, capsys):
    from dss_jax.data.__main__ import main

    root = _gpt_cqa(tmp_path)
    assert main(["stats", "--benchmark", "cqa", "--data_dir", str(root), "--llm", "gpt", "--json"]) == 0
    test = json.loads(capsys.readouterr().out)["test"]
    assert (test["rows"], test["teacher_accuracy"], test["parse_failures"]["total"]) == (3, 0.0, 0)
