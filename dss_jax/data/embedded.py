"""The embedded offline benchmark `arith`: short arithmetic word problems with a teacher.

Generated deterministically (no network, no ../shared): SVAMP-like problems with one or
two operations on small numbers, gold equations written like SVAMP's (`( 84.0 / 2.0 )`),
and teacher completions in the style of the paper's PaLM outputs
(`... 84 / 2 = 42. The answer is (84 / 2).` followed by the start of the next few-shot
example), so the svamp parser and the equation metric apply unchanged. A configurable
share of teacher completions carries a wrong equation (teacher errors) and a smaller
share lacks the answer marker (parse failures), so both label sources and the failure
accounting are exercised.

`write_benchmark(data_dir)` writes it in the `datasets.zip` layout
(`arith/arith_{train,valid,test}.json`, `arith/llm/{split}_CoT_{i}.json`);
`ensure_data_dir()` does so once under the cache (`$DSS_CACHE_DIR` or ~/.cache/dss_jax)
and returns the folder to use as a data dir.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import random
import shutil
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple

from dss_jax.data.fetch import cache_dir

BENCHMARK = "arith"
GENERATOR_VERSION = 1
TEACHER_FILE_ROWS = 1000
FILE_SPLITS = ("train", "valid", "test")

NAMES = [
    ("Luke", "he"), ("Faye", "she"), ("Julia", "she"), ("Danny", "he"), ("Paige", "she"),
    ("Jack", "he"), ("Rebecca", "she"), ("Sam", "he"), ("Mia", "she"), ("Tom", "he"),
    ("Nina", "she"), ("Omar", "he"), ("Lily", "she"), ("Ben", "he"), ("Zoe", "she"),
    ("Carl", "he"),
]
ITEMS = [
    "apples", "pencils", "marbles", "stickers", "cookies", "books", "shells", "cards",
    "coins", "flowers", "candies", "toys", "balloons", "eggs", "stamps", "cups",
]


@dataclasses.dataclass(frozen=True)
class ArithConfig:
    """What is generated; every field enters the cache key."""

    seed: int = 0
    num_train: int = 4000
    num_valid: int = 300
    num_test: int = 300
    teacher_error_rate: float = 0.1
    teacher_parse_failure_rate: float = 0.01
    max_operand: int = 20

    def cache_key(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One generated problem: its text, its equation tree, and a teacher completion."""

    input: str
    gold_equation: str
    teacher_completion: str


# An equation is a tree: an int leaf, or (operator, left, right).
Equation = object


def _value(equation: Equation) -> float:
    if isinstance(equation, int):
        return float(equation)
    operator, left, right = equation
    a, b = _value(left), _value(right)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[operator]


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def gold_text(equation: Equation) -> str:
    """SVAMP's gold style: `( ( 17.0 + 15.0 ) + 2.0 )`."""
    if isinstance(equation, int):
        return f"{float(equation)}"
    operator, left, right = equation
    return f"( {gold_text(left)} {operator} {gold_text(right)} )"


def teacher_text(equation: Equation) -> str:
    """The teacher's style: `((17 + 15) + 2)`."""
    if isinstance(equation, int):
        return str(equation)
    operator, left, right = equation
    return f"({teacher_text(left)} {operator} {teacher_text(right)})"


def _steps(equation: Equation) -> List[str]:
    """Worked steps `a op b = c.` bottom-up."""
    if isinstance(equation, int):
        return []
    operator, left, right = equation
    steps = _steps(left) + _steps(right)
    steps.append(
        f"{_format_number(_value(left))} {operator} {_format_number(_value(right))} = "
        f"{_format_number(_value(equation))}."
    )
    return steps


def _problem_text(rng: random.Random, max_operand: int) -> Tuple[str, str, Equation]:
    """(problem input, opening sentence of the rationale, equation)."""
    name, pronoun = rng.choice(NAMES)
    he = pronoun.capitalize()
    items = rng.choice(ITEMS)
    kind = rng.randrange(8)
    small = lambda low=2, high=max_operand: rng.randint(low, high)  # noqa: E731
    if kind == 0:
        a, b = small(), small()
        text = f"{name} has {a} {items}. {he} finds {b} more {items}.\nHow many {items} does {name} have now?"
        return text, f"{name} starts with {a} {items} and finds {b} more.", ("+", a, b)
    if kind == 1:
        b = small()
        a = b + small(1)
        text = f"{name} had {a} {items}. {he} gave {b} {items} to a friend.\nHow many {items} does {name} have left?"
        return text, f"{name} had {a} {items} and gave away {b}.", ("-", a, b)
    if kind == 2:
        a, b = small(2, 9), small(2, 12)
        text = f"{name} has {a} bags with {b} {items} in each bag.\nHow many {items} does {name} have?"
        return text, f"{a} bags with {b} {items} each.", ("*", a, b)
    if kind == 3:
        b, k = small(2, 9), small(2, 12)
        a = b * k
        text = f"{name} shares {a} {items} equally among {b} friends.\nHow many {items} does each friend get?"
        return text, f"{a} {items} are shared by {b} friends.", ("/", a, b)
    if kind == 4:
        a, b = small(), small()
        c = rng.randint(1, a + b - 1)
        text = (f"{name} has {a} {items}. {he} buys {b} more and then gives {c} away.\n"
                f"How many {items} does {name} have now?")
        return text, f"{name} has {a} {items}, buys {b} and gives away {c}.", ("-", ("+", a, b), c)
    if kind == 5:
        a, b, c = small(2, 9), small(2, 12), small()
        text = f"{name} buys {a} boxes of {b} {items} and {c} loose {items}.\nHow many {items} does {name} buy?"
        return text, f"{a} boxes of {b} {items} and {c} more.", ("+", ("*", a, b), c)
    if kind == 6:
        c, k = small(2, 9), small(2, 10)
        a = rng.randint(1, c * k - 1)
        b = c * k - a
        text = (f"{name} has {a} red {items} and {b} blue {items}. {he} puts them equally into {c} boxes.\n"
                f"How many {items} are in each box?")
        return text, f"{name} has {a} red and {b} blue {items} for {c} boxes.", ("/", ("+", a, b), c)
    a, b, c = small(2, 9), small(2, 9), small(2, 9)
    text = (f"{name} buys {a} packs. Each pack has {b} red {items} and {c} blue {items}.\n"
            f"How many {items} does {name} buy?")
    return text, f"{a} packs with {b} red and {c} blue {items} each.", ("*", a, ("+", b, c))


def _corrupt(rng: random.Random, equation: Equation) -> Equation:
    """A plausible teacher mistake: a wrong operator or an off-by-a-few operand."""
    operator, left, right = equation
    if rng.random() < 0.5:
        swapped = {"+": "-", "-": "+", "*": "+", "/": "*"}[operator]
        if swapped == "-" and _value(left) <= _value(right):
            swapped = "*"
        return (swapped, left, right)
    if isinstance(right, int):
        return (operator, left, right + rng.randint(1, 3))
    return (operator, left, _corrupt(rng, right))


def _teacher_completion(rng: random.Random, opening: str, equation: Equation, config: ArithConfig, tail: str) -> str:
    if rng.random() < config.teacher_error_rate:
        equation = _corrupt(rng, equation)
    rationale = " ".join([opening, *_steps(equation)])
    if rng.random() < config.teacher_parse_failure_rate:
        answer = f"So the result is {_format_number(_value(equation))} in total."
    else:
        answer = f"The answer is {teacher_text(equation)}."
    return f"{rationale} {answer}\n\nQ: {tail}"


def _problems(config: ArithConfig) -> Iterator[Problem]:
    rng = random.Random(config.seed)
    seen = set()
    while True:
        text, opening, equation = _problem_text(rng, config.max_operand)
        if text in seen:
            continue
        seen.add(text)
        tail_text, _, _ = _problem_text(rng, config.max_operand)
        tail = tail_text.replace("\n", " ") + "\nA: " + opening.split(" ")[0]
        yield Problem(text, gold_text(equation), _teacher_completion(rng, opening, equation, config, tail))


def generate(config: ArithConfig = ArithConfig()) -> Dict[str, List[Problem]]:
    """{file split: problems}, disjoint inputs across splits, same result for the same config."""
    sizes = {"train": config.num_train, "valid": config.num_valid, "test": config.num_test}
    stream = _problems(config)
    return {split: [next(stream) for _ in range(size)] for split, size in sizes.items()}


def write_benchmark(data_dir: os.PathLike, config: ArithConfig = ArithConfig()) -> pathlib.Path:
    """Writes `arith/` in the datasets.zip layout under `data_dir`; returns `data_dir`."""
    root = pathlib.Path(data_dir)
    llm_dir = root / BENCHMARK / "llm"
    llm_dir.mkdir(parents=True, exist_ok=True)
    for split, problems in generate(config).items():
        with open(root / BENCHMARK / f"{BENCHMARK}_{split}.json", "w", encoding="utf-8") as handle:
            for problem in problems:
                handle.write(json.dumps({"input": problem.input, "label": problem.gold_equation}) + "\n")
        for index, start in enumerate(range(0, len(problems), TEACHER_FILE_ROWS)):
            chunk = [p.teacher_completion for p in problems[start : start + TEACHER_FILE_ROWS]]
            with open(llm_dir / f"{split}_CoT_{index}.json", "w", encoding="utf-8") as handle:
                json.dump(chunk, handle)
    return root


def ensure_data_dir(config: ArithConfig = ArithConfig(), cache: Optional[os.PathLike] = None) -> pathlib.Path:
    """The cached data dir holding `arith/` for `config`, written once (atomically)."""
    target = cache_dir(cache) / "embedded" / f"arith-{config.cache_key()}"
    if (target / BENCHMARK / f"{BENCHMARK}_test.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".arith-", dir=target.parent))
    try:
        write_benchmark(staging, config)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / BENCHMARK / f"{BENCHMARK}_test.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def vocabulary_training_text(config: ArithConfig = ArithConfig()) -> List[str]:
    """Every string the arith tasks tokenise, for training the embedded vocabulary."""
    lines = ["predict:", "explain:", "So the answer is", "( 0.5 + 1.0 ) - * /"]
    for problems in generate(config).values():
        for problem in problems:
            lines.extend(problem.input.split("\n"))
            lines.append(problem.gold_equation)
            lines.extend(problem.teacher_completion.split("\n"))
    return lines
