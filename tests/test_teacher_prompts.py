"""The packaged few-shot prompts and the teacher's benchmark registry."""
import json
import re

import pytest

from dss_jax.data import arithmetic, parsing, readers
from dss_jax.teacher import benchmarks as benchmarks_module
from dss_jax.teacher.benchmarks import (
    TeacherBenchmark,
    get_benchmark,
    register_benchmark,
    registered_benchmarks,
)
from dss_jax.teacher.prompts import load_template, packaged_template, parse_template

BUILTIN = ("cqa", "esnli", "anli1", "svamp", "arith")
ANSWER_CUE = {"cqa": "A:", "svamp": "A:", "arith": "A:", "esnli": "Reasonings:", "anli1": "Answer:"}


def exemplar_blocks(name):
    """(exemplar text without its answer, answer text) for each few-shot block of a template."""
    blocks = packaged_template(name).text.split("\n\n")[:-1]
    cue = ANSWER_CUE[name]
    pairs = []
    for block in blocks:
        head, answer = block.split(f"\n{cue} ", 1)
        pairs.append((head, answer))
    return pairs


def test_every_builtin_benchmark_is_registered():
    assert set(BUILTIN) <= set(registered_benchmarks())


@pytest.mark.parametrize("name", BUILTIN)
def test_a_packaged_prompt_has_four_to_seven_exemplars_and_ends_at_the_answer_cue(name):
    template = packaged_template(name)
    assert 4 <= len(exemplar_blocks(name)) <= 7
    assert template.text.endswith("\n" + ANSWER_CUE[name])
    assert not template.text.startswith("#")


@pytest.mark.parametrize("name", BUILTIN)
def test_every_exemplar_answer_parses_with_the_benchmarks_own_parser(name):
    for head, answer in exemplar_blocks(name):
        parsed = parsing.parse_teacher_output(name, answer)
        assert parsed.status == parsing.OK, (head, answer)
        if name == "cqa":
            choices = re.findall(r"^\([a-e]\) (.*)$", head, flags=re.M)
            assert parsed.label in choices
        elif name in ("esnli", "anli1"):
            assert parsed.label in readers.NLI_LABELS
        else:
            value = arithmetic.evaluate_equation(parsed.label)
            assert value is not None and f"= {value:g}" in parsed.rationale


@pytest.mark.parametrize("name", ["esnli", "anli1"])
def test_nli_exemplars_cover_all_three_labels(name):
    labels = {parsing.parse_teacher_output(name, answer).label for _, answer in exemplar_blocks(name)}
    assert labels == set(readers.NLI_LABELS)


def test_the_exemplars_are_not_copied_from_the_reference_teacher_outputs(dss_data_dir):
    reference = json.loads((dss_data_dir / "cqa" / "llm" / "train_CoT_0.json").read_text())
    joined = "\n".join(reference)
    for head, _ in exemplar_blocks("cqa"):
        assert head.splitlines()[0] not in joined


def test_a_cqa_row_becomes_the_query_block_with_lettered_choices(dss_data_dir):
    row = json.loads((dss_data_dir / "cqa" / "cqa_train.json").read_text().splitlines()[0])
    benchmark = get_benchmark("cqa")
    prompt = benchmark.template().render(benchmark.prompt_fields(row, "row 0"))
    choices = "\n".join(f"({l}) {c}" for l, c in zip("abcde", row["choices"]))
    assert prompt.endswith(f"\n\nQ: {row['question']}\nAnswer Choices:\n{choices}\nA:")


def test_an_svamp_problem_is_put_on_one_line():
    benchmark = get_benchmark("svamp")
    row = {"input": "Body sentence.\nHow many?", "label": "( 1.0 + 2.0 )"}
    prompt = benchmark.template().render(benchmark.prompt_fields(row, "row 0"))
    assert prompt.endswith("\n\nQ: Body sentence. How many?\nA:")


def test_an_nli_row_fills_premise_and_hypothesis():
    benchmark = get_benchmark("esnli")
    prompt = benchmark.template().render(benchmark.prompt_fields({"premise": "P.", "hypothesis": "H."}, "row 0"))
    assert prompt.endswith("\n\nPremise: P.\nHypothesis: H.\nReasonings:")


def test_a_row_missing_a_field_is_a_clear_error():
    benchmark = get_benchmark("cqa")
    with pytest.raises(readers.BadRowError, match="row 3.*choices"):
        benchmark.prompt_fields({"question": "q?"}, "row 3")


def test_a_template_without_a_placeholder_is_rejected():
    with pytest.raises(ValueError, match="placeholder"):
        parse_template("Q: fixed question\nA:", "inline")


def test_rendering_names_missing_and_unused_fields():
    template = parse_template("# comment\nQ: {{question}}\nA:", "inline")
    assert template.text == "Q: {{question}}\nA:"
    with pytest.raises(ValueError, match="question"):
        template.render({})
    with pytest.raises(ValueError, match="extra"):
        template.render({"question": "q", "extra": "x"})


def test_placeholder_text_inside_a_row_is_not_substituted_again():
    template = parse_template("Q: {{question}}\nA:", "inline")
    assert template.render({"question": "what is {{question}}?"}) == "Q: what is {{question}}?\nA:"


def test_a_user_registers_a_new_benchmark_with_a_prompt_file_reader_and_parser(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks_module, "_REGISTRY", dict(benchmarks_module._REGISTRY))
    prompt_file = tmp_path / "yesno.txt"
    prompt_file.write_text("Q: Is ice cold?\nA: Ice is frozen water. Verdict: yes\n\nQ: {{text}}\nA:\n")
    benchmark = register_benchmark(
        TeacherBenchmark(
            name="yesno_test",
            prompt_fields=lambda row, where: {"text": row["text"]},
            stop=("\n\nQ:",),
            rows_per_file=100,
            read_rows=lambda data_dir, split: [{"text": "Is fire hot?"}],
            gold_label=lambda row, where: None,
            parse=lambda completion: parsing.ParsedTeacher(*completion.split(" Verdict: "), parsing.OK),
            accuracy=lambda golds, labels: 0.0,
            prompt_file=str(prompt_file),
        )
    )
    assert get_benchmark("yesno_test") is benchmark
    assert benchmark.template().render({"text": "Is fire hot?"}).endswith("Q: Is fire hot?\nA:")
    assert load_template(str(prompt_file)).placeholders == {"text"}
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark(benchmark)


def test_an_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError, match="cqa"):
        get_benchmark("nope")
