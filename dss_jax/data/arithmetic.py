"""A strict arithmetic evaluator for equation labels such as `( 84.0 / 2.0 )`.

Replaces the reference code's `eval` of model output. The whole grammar:

    equation   := expression
    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := "-" factor | number | "(" expression ")"
    number     := digits ["." digits] | "." digits
    digits     := ("0" | "1" | ... | "9")+

Tokens may be separated by ASCII spaces, tabs, newlines and carriage returns, and nothing
else. Only the ASCII characters above are understood: no unary `+`, no `1.` without
fraction digits, no exponents (`1e5`), no `_` separators, no `inf`/`nan`, no full-width or
other non-ASCII digits (`１`, `٣`), no other whitespace (no-break space, form feed, ...),
no names, calls, `**`, `//`, `%` or commas. Anything else is not an equation:
`evaluate_equation` returns None, nothing is ever executed, and it never raises. Division
by zero, a non-finite value (an overflow), more than `MAX_CHARS` characters and
parentheses nested deeper than `MAX_DEPTH` also give None. The parser is iterative (an
operator-precedence loop with explicit stacks), so it needs the same few stack frames at
any nesting depth and works however deep the caller's own stack already is.
"""
from __future__ import annotations

import math
import re
from typing import List, Optional

MAX_DEPTH = 200
MAX_CHARS = 10_000
RELATIVE_TOLERANCE = 1e-6
ABSOLUTE_TOLERANCE = 1e-9

# ASCII only, spelled out: `\d` and `\s` would also match non-ASCII digits and spaces.
_TOKEN = re.compile(r"[ \t\n\r]*(?:(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)|(?P<op>[-+*/()]))[ \t\n\r]*")
_NEGATE = "neg"  # the unary minus on the operator stack
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, _NEGATE: 3}


class _NotAnEquation(Exception):
    pass


def _tokenize(text: str) -> List[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise _NotAnEquation(f"unexpected character at {position}")
        tokens.append(match.group("number") or match.group("op"))
        position = match.end()
    return tokens


def _apply(operator: str, values: List[float]) -> None:
    """Pop the operands of `operator` from `values` and push its result."""
    if operator == _NEGATE:
        values.append(-values.pop())
        return
    right, left = values.pop(), values.pop()
    if operator == "+":
        values.append(left + right)
    elif operator == "-":
        values.append(left - right)
    elif operator == "*":
        values.append(left * right)
    elif right == 0:
        raise _NotAnEquation("division by zero")
    else:
        values.append(left / right)


def _evaluate_tokens(tokens: List[str]) -> float:
    """Operator-precedence evaluation with explicit stacks (no recursion)."""
    values: List[float] = []
    operators: List[str] = []
    depth = 0
    expect_operand = True
    for token in tokens:
        if expect_operand:
            if token == "(":
                depth += 1
                if depth > MAX_DEPTH:
                    raise _NotAnEquation("nested too deeply")
                operators.append(token)
            elif token == "-":
                operators.append(_NEGATE)
            elif token in _PRECEDENCE or token == ")":
                raise _NotAnEquation(f"unexpected {token!r}")
            else:
                values.append(float(token))
                expect_operand = False
        elif token == ")":
            while operators and operators[-1] != "(":
                _apply(operators.pop(), values)
            if not operators:
                raise _NotAnEquation("unbalanced ')'")
            operators.pop()
            depth -= 1
        elif token in ("+", "-", "*", "/"):
            while operators and operators[-1] != "(" and _PRECEDENCE[operators[-1]] >= _PRECEDENCE[token]:
                _apply(operators.pop(), values)
            operators.append(token)
            expect_operand = True
        else:
            raise _NotAnEquation(f"unexpected {token!r} after an operand")
    if expect_operand:
        raise _NotAnEquation("unexpected end")
    while operators:
        operator = operators.pop()
        if operator == "(":
            raise _NotAnEquation("unbalanced '('")
        _apply(operator, values)
    return values[0]


def evaluate_equation(text: object) -> Optional[float]:
    """The value of an arithmetic expression, or None if it is not a valid one (never raises)."""
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    try:
        tokens = _tokenize(text)
        if not tokens:
            return None
        value = _evaluate_tokens(tokens)
    except (_NotAnEquation, ArithmeticError, ValueError, RecursionError, MemoryError):
        # RecursionError/MemoryError: only a caller already at its limits; the parser itself does not recurse.
        return None
    return value if math.isfinite(value) else None


def equations_equal(predicted: object, gold: object) -> bool:
    """True when both parse and their values agree within a small relative tolerance."""
    predicted_value = evaluate_equation(predicted)
    gold_value = evaluate_equation(gold)
    if predicted_value is None or gold_value is None:
        return False
    return math.isclose(
        predicted_value, gold_value, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE
    )
