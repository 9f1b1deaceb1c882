"""Label metrics: exact match, equation value by a strict parser (never eval), postprocessors."""
import builtins

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dss_jax.data import arithmetic, metrics


@pytest.mark.parametrize("text, value", [
    ("( 84.0 / 2.0 )", 42.0),
    ("(84 / 2)", 42.0),
    ("( ( 17.0 + 15.0 ) + 2.0 )", 34.0),
    ("-(3 - 5)", 2.0),
    ("2 - -3", 5.0),
    ("2 + 3 * 4", 14.0),
    ("(2 + 3) * 4", 20.0),
    ("8 / 4 / 2", 1.0),
    ("10 - 4 - 3", 3.0),
    (".5 + 1.0", 1.5),
    ("  7  ", 7.0),
    ("\t( 1 +\r\n2 )\n", 3.0),
    ("2 * -3", -6.0),
    ("- - 4", 4.0),
    ("(" * 200 + "1" + ")" * 200, 1.0),
])
def test_valid_equations_evaluate_with_usual_precedence(text, value):
    assert arithmetic.evaluate_equation(text) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/dss_pwned')",
    "2**3", "1e3", "0x10", "322,775", "3 4", "(1 + 2", "1 + 2)", "()", "", "   ",
    "abs(-3)", "1 // 2", "1 % 2", "(1 / 0)", "1 / (2 - 2)", "9" * 400, "(" * 300 + "1" + ")" * 300,
    "1 × 2", "forty two",
])
def test_anything_else_is_not_an_equation(text):
    assert arithmetic.evaluate_equation(text) is None


# Strings Python's float() or int() would take, or that only look like equations.
LOOKS_LIKE_A_NUMBER = [
    "1_000", "1_0 + 2", "inf", "-inf", "Infinity", "nan", "NaN", "1e5", "1E5", "2.5e-3", "1e", "0b11", "0o7",
    "1j", "+5", "2 * +3", "+(1 + 2)", "1.", "(3. / 2)", "1..5", "1.2.3", ".", "-", "( )",
    "１２", "(１ + ２)", "٣", "٣ + 1", "१२", "𝟏", "²", "½", "1\u00a0+ 2", "1 +\u20032", "\u30001", "\x0c1",
    "1\x0b", "1\x1c", "1\u2028", "\ufeff1", "1\x00", "1 \u2212 2", "1 ÷ 2", "(" * 201 + "1" + ")" * 201,
]


@pytest.mark.parametrize("text", LOOKS_LIKE_A_NUMBER)
def test_text_that_only_looks_like_a_number_to_python_is_not_an_equation(text):
    assert arithmetic.evaluate_equation(text) is None


def test_non_strings_are_not_equations():
    assert arithmetic.evaluate_equation(None) is None
    assert arithmetic.evaluate_equation(42) is None


def test_hostile_prediction_is_scored_wrong_without_being_run(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("model output must never be executed")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "__import__", forbidden)
    result = metrics.equation_accuracy(["( 84.0 / 2.0 )"], ["__import__('os').getcwd()"])
    assert result == {"accuracy": 0.0}


def test_svamp_teacher_style_equation_matches_gold_style():
    assert metrics.equation_accuracy(["( 84.0 / 2.0 )"], ["(84 / 2)"]) == {"accuracy": 100.0}


def test_equation_accuracy_is_percent_of_value_matches():
    targets = ["( 84.0 / 2.0 )", "( 3.0 + 4.0 )", "( 1.0 / 3.0 )", "( 2.0 * 2.0 )"]
    predictions = ["(84 / 2)", "(3 * 4)", "(2 / 6)", "(2 / 0)"]
    assert metrics.equation_accuracy(targets, predictions) == {"accuracy": 50.0}


def test_equal_values_within_relative_tolerance_count_as_equal():
    assert arithmetic.equations_equal("1 / 3", "0.333333333333")
    assert not arithmetic.equations_equal("1 / 3", "0.3333")


def test_exact_match_is_case_and_space_sensitive_like_the_reference():
    targets = ["math problem", "neutral", "entailment", "contradiction"]
    predictions = ["math problem", "Neutral", "entailment ", "contradiction"]
    assert metrics.exact_match_accuracy(targets, predictions) == {"accuracy": 50.0}


@pytest.mark.parametrize("benchmark, metric_fn", [
    ("cqa", metrics.exact_match_accuracy),
    ("esnli", metrics.exact_match_accuracy),
    ("anli1", metrics.exact_match_accuracy),
    ("svamp", metrics.equation_accuracy),
    ("arith", metrics.equation_accuracy),
])
def test_each_benchmark_uses_its_own_metric(benchmark, metric_fn):
    assert metrics.seqio_metric_fn(benchmark) is metric_fn


def test_fraction_helper_agrees_with_percent_metric():
    targets, predictions = ["( 1.0 + 1.0 )", "( 2.0 )"], ["(2)", "(3)"]
    assert metrics.accuracy_fraction("svamp", targets, predictions) == 0.5


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.exact_match_accuracy(["a", "b"], ["a"])


def test_rationale_then_label_postprocessor_takes_text_after_last_marker():
    output = "Of the choices only a shelf holds books. So the answer is shelf"
    assert metrics.label_from_rationale_then_label(output) == "shelf"
    target = metrics.rationale_then_label_target("Of the choices only a shelf holds books.", "shelf")
    assert metrics.label_from_rationale_then_label(target, is_target=True) == "shelf"
    assert metrics.label_from_rationale_then_label("no marker at all") == ""


def test_label_postprocessor_decodes_bytes():
    assert metrics.label_postprocessor(b"neutral") == "neutral"


numbers = st.integers(min_value=0, max_value=999).map(str) | st.decimals(
    min_value=0, max_value=999, places=2, allow_nan=False, allow_infinity=False).map(str)


@st.composite
def equations(draw, depth=0):
    if depth > 3 or draw(st.booleans()):
        return draw(numbers)
    operator = draw(st.sampled_from(["+", "-", "*", "/"]))
    return f"( {draw(equations(depth + 1))} {operator} {draw(equations(depth + 1))} )"


@settings(max_examples=100, deadline=None)
@given(equations())
def test_fuzz_parser_agrees_with_python_arithmetic_on_generated_equations(equation):
    # The oracle is python's own arithmetic on a tree we built, not eval of text.
    value = arithmetic.evaluate_equation(equation)
    oracle = _evaluate_tree(equation)
    if oracle is None:
        assert value is None
    else:
        assert value == pytest.approx(oracle, rel=1e-9, abs=1e-9)


def _evaluate_tree(equation):
    """Evaluates the fully parenthesised form produced by `equations` by hand."""
    tokens = equation.replace("(", " ( ").replace(")", " ) ").split()

    def parse(position):
        if tokens[position] != "(":
            return float(tokens[position]), position + 1
        left, position = parse(position + 1)
        operator = tokens[position]
        right, position = parse(position + 1)
        if left is None or right is None or (operator == "/" and right == 0):
            return None, position + 1
        value = {"+": left + right, "-": left - right, "*": left * right, "/": left / right if right else 0}[operator]
        return value, position + 1

    return parse(0)[0]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_parser_never_raises_on_any_text(text):
    value = arithmetic.evaluate_equation(text)
    assert value is None or isinstance(value, float)


def _frames_available() -> int:
    """How many more Python frames this stack holds before RecursionError (measured, not counted:
    pytest-xdist, hypothesis and C calls take stack too)."""
    def probe(depth):
        try:
            return probe(depth + 1)
        except RecursionError:
            return depth

    return probe(0)


def _call_at_stack_depth(depth_left, function, *args):
    """Call `function(*args)` with only about `depth_left` Python frames left before the recursion limit."""
    def descend(remaining):
        if remaining <= 0:
            return function(*args)
        return descend(remaining - 1)

    return descend(_frames_available() - depth_left)


@pytest.mark.parametrize("depth_left", [8, 12, 20, 50])
def test_the_parser_works_however_deep_the_callers_stack_already_is(depth_left):
    nested = "(" * 199 + "- 1" + ")" * 199
    assert _call_at_stack_depth(depth_left, arithmetic.evaluate_equation, nested) == -1.0
    assert _call_at_stack_depth(depth_left, arithmetic.evaluate_equation, "(" * 5000 + "1" + ")" * 5000) is None
    assert _call_at_stack_depth(depth_left, arithmetic.evaluate_equation, "-" * 5000 + "1") == 1.0


EQUATION_ALPHABET = set("0123456789.+-*/() \t\n\r")
foreign_characters = st.characters(codec="utf-8").filter(lambda c: c not in EQUATION_ALPHABET)
hostile_fragments = st.sampled_from(["_", "e5", "E", "inf", "nan", "j", "x", "**", "//", "%", ",", "\u00a0",
                                     "\u2003", "\x0c", "\x0b", "１", "٣", "²", "\u2212"]) | foreign_characters


@settings(max_examples=300, deadline=None)
@given(equations(), hostile_fragments, st.integers(min_value=0))
def test_fuzz_an_equation_with_a_foreign_character_anywhere_is_not_an_equation(equation, fragment, position):
    position %= len(equation) + 1
    assert arithmetic.evaluate_equation(equation[:position] + fragment + equation[position:]) is None


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(lambda text: not set(text) <= EQUATION_ALPHABET))
def test_fuzz_any_text_outside_the_ascii_grammar_alphabet_is_not_an_equation(text):
    assert arithmetic.evaluate_equation(text) is None


@settings(max_examples=200, deadline=None)
@given(equations(), st.sampled_from(["+{}", "1 * +{}", "({}) - +{}", "{}."]))
def test_fuzz_unary_plus_and_a_bare_trailing_point_are_not_in_the_grammar(equation, form):
    text = form.format(equation, equation) if form != "{}." else (equation if equation[-1].isdigit() else "1") + "."
    assert arithmetic.evaluate_equation(text) is None


grammar_soup = st.text(alphabet=sorted(EQUATION_ALPHABET), max_size=400) | st.builds(
    lambda n, inner, m: "(" * n + inner + ")" * m,
    st.integers(0, 3000), st.text(alphabet=sorted(EQUATION_ALPHABET), max_size=20), st.integers(0, 3000))


@settings(max_examples=150, deadline=None)
@given(grammar_soup, st.integers(min_value=6, max_value=40))
def test_fuzz_the_parser_never_raises_near_the_recursion_limit(text, depth_left):
    value = _call_at_stack_depth(depth_left, arithmetic.evaluate_equation, text)
    assert value is None or (isinstance(value, float) and value == value and abs(value) != float("inf"))
