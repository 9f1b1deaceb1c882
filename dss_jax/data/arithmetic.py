"""A strict arithmetic evaluator for equation labels such as `( 84.0 / 2.0 )`.

Replaces the reference code's `eval` of model output. Grammar (whitespace ignored):

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := "-" factor | "+" factor | number | "(" expression ")"
    number     := digits ["." digits] | "." digits

Anything else (names, calls, `**`, exponents, commas, ...) is not an equation:
`evaluate_equation` returns None and nothing is ever executed. Division by zero,
non-finite values and nesting deeper than `MAX_DEPTH` also give None.
"""
from __future__ import annotations

import math
import re
from typing import List, Optional

MAX_DEPTH = 200
MAX_CHARS = 10_000
RELATIVE_TOLERANCE = 1e-6
ABSOLUTE_TOLERANCE = 1e-9

_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?|\.\d+)|(?P<op>[-+*/()]))")


class _NotAnEquation(Exception):
    pass


def _tokenize(text: str) -> List[str]:
    tokens, position = [], 0
    stripped_end = len(text.rstrip())
    while position < stripped_end:
        match = _TOKEN.match(text, position)
        if match is None:
            raise _NotAnEquation(f"unexpected character at {position}")
        tokens.append(match.group("number") or match.group("op"))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: List[str]):
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    def peek(self) -> Optional[str]:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _NotAnEquation("unexpected end")
        self.position += 1
        return token

    def expression(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.factor()
        while self.peek() in ("*", "/"):
            operator = self.take()
            right = self.factor()
            if operator == "*":
                value = value * right
            else:
                if right == 0:
                    raise _NotAnEquation("division by zero")
                value = value / right
        return value

    def factor(self) -> float:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _NotAnEquation("nested too deeply")
        token = self.take()
        if token == "-":
            value = -self.factor()
        elif token == "+":
            value = self.factor()
        elif token == "(":
            value = self.expression()
            if self.take() != ")":
                raise _NotAnEquation("unbalanced parenthesis")
        elif token in ("*", "/", ")"):
            raise _NotAnEquation(f"unexpected {token!r}")
        else:
            value = float(token)
        self.depth -= 1
        return value


def evaluate_equation(text: object) -> Optional[float]:
    """The value of an arithmetic expression, or None if it is not a valid one."""
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    try:
        tokens = _tokenize(text)
        if not tokens:
            return None
        parser = _Parser(tokens)
        value = parser.expression()
        if parser.peek() is not None:
            return None
    except (_NotAnEquation, OverflowError, ValueError):
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
