"""Teacher-output parsing: the reference code's splits, failure values, and a fuzz."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dss_jax.data import parsing
from dss_jax.data.parsing import parse_teacher_output
from reference_parsers_support import REFERENCE, reference_cqa_label

BENCHMARKS = ["cqa", "svamp", "esnli", "anli1", "arith"]


# --- known rows of the real teacher outputs ------------------------------------------

def _first_completion(dss_data_dir, benchmark, file_split):
    with open(dss_data_dir / benchmark / "llm" / f"{file_split}_CoT_0.json") as handle:
        return json.load(handle)[0]


def test_cqa_known_row_gives_answer_text_without_choice_letter(dss_data_dir):
    parsed = parse_teacher_output("cqa", _first_completion(dss_data_dir, "cqa", "train"))
    assert parsed == parsing.ParsedTeacher(
        "The answer must be something that has to do with the above problem. Of the above "
        "choices, only math problem has to do with the above problem.",
        "math problem",
        "ok",
    )


def test_svamp_known_row_gives_teacher_equation(dss_data_dir):
    parsed = parse_teacher_output("svamp", _first_completion(dss_data_dir, "svamp", "train"))
    assert parsed.rationale == (
        "Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. 84 / 2 = 42."
    )
    assert (parsed.label, parsed.status) == ("(84 / 2)", "ok")


def test_esnli_known_row_gives_label_before_next_premise(dss_data_dir):
    parsed = parse_teacher_output("esnli", _first_completion(dss_data_dir, "esnli", "valid"))
    assert parsed == parsing.ParsedTeacher(
        "The to go packages are not necessarily from lunch.", "neutral", "ok"
    )


def test_anli1_known_row_drops_full_stop_of_label(dss_data_dir):
    parsed = parse_teacher_output("anli1", _first_completion(dss_data_dir, "anli1", "valid"))
    assert parsed.rationale.startswith("Linguistics involves an analysis of language form")
    assert parsed.rationale.endswith("so context is also a crucial aspect.")
    assert (parsed.label, parsed.status) == ("contradiction", "ok")


# --- failure values and statuses -------------------------------------------------------

def test_cqa_without_choice_marker_labels_single_space():
    parsed = parse_teacher_output("cqa", "It holds shirts. So the answer is one of these four.\n\nQ: x")
    assert parsed == parsing.ParsedTeacher("It holds shirts.", " ", "no_choice_marker")


def test_cqa_without_answer_marker_keeps_text_as_rationale():
    parsed = parse_teacher_output("cqa", "No conclusion here.\n\nQ: next")
    assert parsed == parsing.ParsedTeacher("No conclusion here.", " ", "no_answer_marker")


def test_cqa_label_is_text_between_first_and_second_choice_marker():
    parsed = parse_teacher_output("cqa", "R. So the answer is (b) shelf or (c) table.")
    assert parsed.label == "shelf or"


def test_svamp_without_answer_marker_is_single_spaces():
    parsed = parse_teacher_output("svamp", "Ed lost more than 19 marbles.\n\nQ: There are 15 trees.")
    assert parsed == parsing.ParsedTeacher(" ", " ", "no_answer_marker")


def test_svamp_with_two_answer_markers_fails_like_reference():
    parsed = parse_teacher_output("svamp", "A. The answer is (1 + 2). The answer is (3).")
    assert parsed == parsing.ParsedTeacher(" ", " ", "multiple_answer_markers")


def test_svamp_equation_span_is_greedy_first_to_last_parenthesis_on_a_line():
    parsed = parse_teacher_output("svamp", "x. The answer is ((491 - 216) * 7) / (2).")
    assert parsed.label == "((491 - 216) * 7) / (2)"


def test_svamp_unclosed_equation_is_no_equation():
    parsed = parse_teacher_output("svamp", "So 275. The answer is ((491 - 21\n\nQ: next")
    assert (parsed.label, parsed.status) == (" ", "no_equation")


def test_svamp_continuation_after_q_marker_is_ignored():
    parsed = parse_teacher_output("svamp", "3 + 4 = 7. The answer is (3 + 4).\n\nQ: 1? A: The answer is (1)")
    assert parsed == parsing.ParsedTeacher("3 + 4 = 7.", "(3 + 4)", "ok")


def test_esnli_without_answer_keeps_whole_text_as_rationale():
    parsed = parse_teacher_output("esnli", "The men are standing by a docked boat.\n")
    assert parsed == parsing.ParsedTeacher("The men are standing by a docked boat.", " ", "no_answer_marker")


def test_anli1_without_answer_marker_is_empty_strings():
    parsed = parse_teacher_output("anli1", "The book was written in 1894, so the answer is entailment.")
    assert parsed == parsing.ParsedTeacher("", "", "no_answer_marker")


def test_anli1_marker_at_end_gives_empty_label():
    parsed = parse_teacher_output("anli1", "The hypothesis is a subset. So the answer is")
    assert parsed == parsing.ParsedTeacher("The hypothesis is a subset.", "", "empty_label")


@pytest.mark.parametrize("benchmark", BENCHMARKS)
@pytest.mark.parametrize("completion", [None, 3, b"bytes", ["list"]])
def test_non_string_completion_is_counted_not_raised(benchmark, completion):
    parsed = parse_teacher_output(benchmark, completion)
    assert parsed.status == "not_a_string"
    assert isinstance(parsed.rationale, str) and isinstance(parsed.label, str)


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_blank_completion_has_status_empty_and_reference_values(benchmark):
    parsed = parse_teacher_output(benchmark, "  \n ")
    assert parsed.status == "empty"
    if benchmark != "cqa":  # the reference raises on cqa
        assert (parsed.rationale, parsed.label) == REFERENCE[benchmark]("  \n ")


def test_unknown_benchmark_is_an_error():
    with pytest.raises(ValueError, match="unknown benchmark"):
        parse_teacher_output("gsm8k", "x")


# --- fuzz --------------------------------------------------------------------------------

FRAGMENTS = [
    "So the answer is", "The answer is", "Answer: ", "Answer:", "Premise:", "Premise", "Q:",
    "(a)", "(b) ", "(", ")", ".", "\n", " ", "\n\n", "84 / 2", "math problem", "neutral",
    "entailment.", "x", "é", "\t", "((", "))", "(84 / 2).",
]
completions = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=14).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(benchmark=st.sampled_from(BENCHMARKS), completion=completions)
def test_fuzz_parser_never_raises_and_matches_reference_where_it_is_defined(benchmark, completion):
    parsed = parse_teacher_output(benchmark, completion)
    assert isinstance(parsed.rationale, str) and isinstance(parsed.label, str)
    assert parsed.status == "ok" or parsed.status in parsing.FAILURE_KINDS
    try:
        expected = REFERENCE[benchmark](completion)
    except ValueError:  # only cqa's reference raises: zero or several answer markers
        assert benchmark == "cqa"
        markers = completion.split("Q:")[0].rstrip().count("So the answer is")
        if markers == 0:
            assert parsed.status in ("no_answer_marker", "empty")
            assert parsed.label == " "
        else:  # METHOD.md: split once, at the first marker
            head, tail = completion.split("Q:")[0].rstrip().split("So the answer is", 1)
            assert (parsed.rationale, parsed.label) == (head.rstrip(), reference_cqa_label(tail))
        return
    assert (parsed.rationale, parsed.label) == expected


# --- every row accounted for, end to end ------------------------------------------------

any_completion = completions | st.none() | st.integers() | st.lists(st.text(max_size=3), max_size=2)


@settings(max_examples=25, deadline=None)
@given(benchmark=st.sampled_from(["cqa", "svamp", "esnli", "anli1"]),
       outputs=st.lists(any_completion, min_size=1, max_size=12))
def test_fuzz_every_row_is_an_example_and_every_failure_is_counted(benchmark, outputs):
    import tempfile
    import pathlib

    from dss_jax.data import readers, stats

    rows = {
        "cqa": {"question": "q", "choices": ["a", "b", "c", "d", "e"], "answer": "a"},
        "svamp": {"input": "q", "label": "( 1.0 + 1.0 )"},
        "esnli": {"premise": "p", "hypothesis": "h", "label": 0},
        "anli1": {"premise": "p", "hypothesis": "h", "label": 2},
    }[benchmark]
    with tempfile.TemporaryDirectory() as directory:
        root = pathlib.Path(directory)
        (root / benchmark / "llm").mkdir(parents=True)
        with open(root / benchmark / f"{benchmark}_test.json", "w") as handle:
            handle.write("".join(json.dumps(rows) + "\n" for _ in outputs))
        with open(root / benchmark / "llm" / "test_CoT_0.json", "w") as handle:
            json.dump(outputs, handle)
        data = readers.load_split(benchmark, "test", root)
        counted = stats.split_stats(benchmark, data)
    assert [e.example_id for e in data.examples] == list(range(len(outputs)))
    ok = sum(e.parse_status == "ok" for e in data.examples)
    assert ok + counted["parse_failures"]["total"] == counted["rows"] == len(outputs)
    for example, output in zip(data.examples, outputs):
        assert example.parse_status == parse_teacher_output(benchmark, output).status
