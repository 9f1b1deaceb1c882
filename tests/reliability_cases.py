"""The reliability suite's table of bad inputs (issue 17): one row per case, run by tests/test_reliability.py.

Table format. `CASES` is a list of `Case(id, kind, run, expect)` rows:

- `id`     unique, `"<area>/<what>"`, e.g. `"teacher/trickle_body"`; it is the pytest id.
- `kind`   `FILE` (a corrupted, truncated, missing or wrongly encoded file), `CONFIG` (a configuration
           mistake: a flag, setting or environment variable), `SERVER` (a server behaviour) or
           `DATA` (a hostile value inside well-formed input, e.g. a model prediction or a label).
- `run`    a callable taking one argument, a fresh empty `pathlib.Path` work folder (it may use
           it or not). It sets the bad input up and runs the code under test. It either raises
           (an error) or returns a text saying what happened (e.g. a report summary naming the
           counted skip or failed row). A `lambda tmp: ...` is usual.
- `expect` `error(pattern)`: the run must raise a deliberate error, an instance of
           `CLEAN_ERROR_TYPES` (or of `types=` given to `error`), but not of `RAW_ERROR_TYPES`
           (a raw TypeError, KeyError, UnicodeDecodeError, JSONDecodeError or RecursionError is never
           clean), and `"TypeName: message"` must match the regex `pattern` (`re.search`, DOTALL).
           `cli_error(pattern)`: an entrypoint `main(argv)` run through `run_cli` must exit with a
           non-zero status and an stderr matching `pattern`, with no traceback (an exception escaping
           `main` is not clean).
           `counted(pattern)`: the run must return normally and its text match `pattern` (a counted
           skip or a counted failure, e.g. `r"failed_rows=1: .*deadline"`).
- `timeout_s` (optional, default 60): the run must end within it; a hang is not clean.

Adding a case is one line in `CASES`, plus at most a tiny setup function above the table:

    Case("data/empty_train_file", FILE, lambda tmp: load(write(tmp, "cqa/cqa_train.json", "")), error(r"cqa_train")),

Helpers for the usual setups: `write(tmp, relative_path, text_or_bytes)` (returns the path),
`run_cli(main, argv)` (runs an entrypoint's `main`, returns "exit 0: <stdout tail>" or raises
`ReportedError("exit N: <stderr>")`), `teacher_row(tmp, fault)` (one teacher request against the
local fake server with that behaviour; returns the run's report summary and checks that the API
key reached no file), `equation_score(text)` (the strict equation metric of one prediction).
At the end of a session test_reliability.py prints "reliability: N cases tried, M handled cleanly".
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import pathlib
import re
import sys
from typing import Callable, Optional, Tuple, Type, Union

FILE = "file corruption"
CONFIG = "configuration mistake"
SERVER = "server behaviour"
DATA = "bad value"  # a hostile value inside well-formed input: a model prediction, a label
KINDS = (FILE, CONFIG, SERVER, DATA)

CLEAN_ERROR_TYPES: Tuple[Type[BaseException], ...] = (ValueError, RuntimeError, OSError)
RAW_ERROR_TYPES: Tuple[Type[BaseException], ...] = (UnicodeError, json.JSONDecodeError, RecursionError,
                                                     NotImplementedError)


class ReportedError(RuntimeError):
    """An entrypoint that exited non-zero with a message (what `run_cli` turns such an exit into)."""


@dataclasses.dataclass(frozen=True)
class Expect:
    """What a clean outcome looks like: an error of given types, or a counted outcome, matching `pattern`."""

    outcome: str  # "error" or "counted"
    pattern: str
    types: Tuple[Type[BaseException], ...] = CLEAN_ERROR_TYPES


def error(pattern: str, types: Tuple[Type[BaseException], ...] = CLEAN_ERROR_TYPES) -> Expect:
    return Expect("error", pattern, types)


def cli_error(pattern: str) -> Expect:
    return Expect("error", pattern, (ReportedError,))


def counted(pattern: str) -> Expect:
    return Expect("counted", pattern)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str
    run: Callable[[pathlib.Path], object]
    expect: Expect
    timeout_s: float = 60.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"case {self.id}: kind must be one of {KINDS}, got {self.kind!r}")


def judge(case: Case, returned: object = None, raised: Optional[BaseException] = None) -> Tuple[bool, str]:
    """(handled cleanly?, what happened) for one finished run of `case`."""
    expect = case.expect
    if raised is not None:
        text = f"{type(raised).__name__}: {raised}"
        if expect.outcome != "error":
            return False, f"expected a counted outcome, but it raised {text}"
        if isinstance(raised, RAW_ERROR_TYPES) or not isinstance(raised, expect.types):
            wanted = ", ".join(t.__name__ for t in expect.types)
            return False, f"a raw {type(raised).__name__} (a traceback), not a deliberate {wanted}: {text}"
    else:
        text = str(returned)
        if expect.outcome != "counted":
            return False, f"expected an error matching {expect.pattern!r}, but it returned: {text[:500]}"
    if not re.search(expect.pattern, text, flags=re.DOTALL):
        return False, f"the outcome does not match {expect.pattern!r}: {text[:1000]}"
    return True, text


# ---------------------------------------------------------------------------------------------------------
# Setup helpers


def write(tmp: pathlib.Path, relative_path: str, content: Union[str, bytes]) -> pathlib.Path:
    path = tmp / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def run_cli(main: Callable[[list], int], argv: list) -> str:
    """Run an entrypoint; "exit 0: ..." when it succeeds, else ReportedError("exit N: <stderr>")."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            status = exit_.code if isinstance(exit_.code, int) else 1
    if status:
        raise ReportedError(f"exit {status}: {stderr.getvalue().strip()}")
    return f"exit 0: {stdout.getvalue()[-500:]}"


SECRET_KEY = "sk-reliability-SECRET-0123456789abcdef"
CQA_ROW = {"id": "r0", "question": "Where do you put books?", "answer": "shelf",
           "choices": ["shelf", "oven", "river", "cloud", "shoe"]}


def key_forms(key: str = SECRET_KEY) -> set:
    """The key as a hostile server might hand it back: plain, any case, base64'd inside a header dump."""
    forms = {key, key.lower(), key.upper()}
    for prefix in ("", "Bearer ", "Authorization: Bearer ", "x"):
        encoded = base64.b64encode((prefix + key).encode()).decode()
        forms.add(encoded[len(prefix) * 4 // 3 + 4 : -4])
    return {form.encode() for form in forms}


def _assert_key_in_no_file(tmp: pathlib.Path) -> None:
    for path in tmp.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaked = [form for form in key_forms() if form in data]
            if leaked:
                raise AssertionError(f"the API key reached {path}")  # not a clean outcome


def teacher_row(tmp: pathlib.Path, fault: str, first_attempt_only: bool = False, **server_settings) -> str:
    """One cqa row through run_teacher against the fake server misbehaving with `fault`: the report's summary."""
    from dss_jax.teacher.benchmarks import get_benchmark
    from dss_jax.teacher.client import RetryPolicy, Secret, TeacherClient
    from dss_jax.teacher.runner import run_teacher
    from teacher_server import FakeServerConfig, FakeTeacherServer

    write(tmp, "data/cqa/cqa_train.json", json.dumps(CQA_ROW) + "\n")
    server_settings.setdefault("trickle_interval_s", 0.05)
    server_settings.setdefault("trickle_max_s", 15.0)
    plan = (lambda q, attempt: fault if attempt == 1 else None) if first_attempt_only else (lambda q, a: fault)
    config = FakeServerConfig(fault_plan=plan, **server_settings)
    with FakeTeacherServer(config) as server:
        client = TeacherClient(server.base_url, "m", api_key=Secret(SECRET_KEY), timeout_s=0.5, seed=0,
                               retry=RetryPolicy(max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02),
                               max_response_bytes=200_000)
        report = run_teacher(get_benchmark("cqa"), tmp / "data", "train", tmp / "out", client, concurrency=1)
    _assert_key_in_no_file(tmp)
    failures = "; ".join(report.failed_rows.values())
    return (f"rows_done={report.rows_done} failed_rows={len(report.failed_rows)}: {failures}; "
            f"output_files={len(report.output_files)}")


def teacher_cli(tmp: pathlib.Path, *flags: str) -> str:
    """The teacher entrypoint with a valid base command plus `flags` (later flags override earlier ones)."""
    from dss_jax.teacher import cli

    write(tmp, "data/cqa/cqa_train.json", json.dumps(CQA_ROW) + "\n")
    argv = ["--benchmark", "cqa", "--split", "train", "--data_dir", str(tmp / "data"), "--out_dir",
            str(tmp / "out"), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--no_progress", *flags]
    return run_cli(cli.main, argv)


def equation_score(prediction: str, gold: str = "( 1.0 + 2.0 )") -> str:
    """The equation metric of one prediction against a gold label: "accuracy=<percent>"."""
    from dss_jax.data import metrics

    return f"accuracy={metrics.equation_accuracy([gold], [prediction])['accuracy']}"


def near_recursion_limit(function: Callable[[], object], frames_left: int = 12) -> object:
    """`function()` called with only about `frames_left` Python frames left before the recursion limit."""
    def descend(remaining: int):
        return function() if remaining <= frames_left else descend(remaining - 1)

    frame, used = sys._getframe(), 0
    while frame is not None:
        frame, used = frame.f_back, used + 1
    return descend(sys.getrecursionlimit() - used - 2)


def _fault(name: str) -> str:
    import teacher_server

    return getattr(teacher_server, name)


import reliability_run_dir as rd  # noqa: E402  (run-directory and configuration setups)


# ---------------------------------------------------------------------------------------------------------
# The table. One line per case.

DEADLINE = r"failed_rows=1: .*no complete answer within the total deadline of 0.5s; output_files=0"
RETRIED_OK = r"rows_done=1 failed_rows=0: ; output_files=1"
WRONG = r"^accuracy=0.0$"

CASES = [
    # The teacher server misbehaves (issue 17 item 8): every request ends, nothing hostile is stored.
    Case("teacher/trickle_body_under_the_cap", SERVER,
         lambda tmp: teacher_row(tmp, _fault("FAULT_TRICKLE_BODY"), trickle_content_length=100_000), counted(DEADLINE)),
    Case("teacher/huge_content_length", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_TRICKLE_BODY")),
         counted(r"failed_rows=1: .*larger than max_response_bytes=200000; refused, not stored")),
    Case("teacher/slow_endless_chunked_body", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_SLOW_CHUNKED")),
         counted(DEADLINE)),
    Case("teacher/headers_trickle_forever", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_TRICKLE_HEADERS")),
         counted(DEADLINE)),
    Case("teacher/oversized_answer", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_HUGE_ANSWER")),
         counted(r"failed_rows=1: .*larger than max_response_bytes")),
    Case("teacher/oversized_chunked_answer", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_HUGE_CHUNKED")),
         counted(r"failed_rows=1: .*larger than max_response_bytes")),
    Case("teacher/key_echoed_in_error_body", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_ECHO_KEY_IN_ERROR")),
         counted(r"failed_rows=1: .*HTTP 400 \(not retried\)")),
    Case("teacher/key_echoed_in_completion", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_ECHO_KEY_IN_TEXT")),
         counted(r"failed_rows=1: .*the answer contains the API key")),
    Case("teacher/non_utf8_body", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_NON_UTF8")),
         counted(r"failed_rows=1: .*not valid UTF-8")),
    Case("teacher/wrong_types", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_WRONG_TYPES")),
         counted(r"failed_rows=1: .*finish_reason is not a short string")),
    Case("teacher/deeply_nested_json", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_DEEP_JSON")),
         counted(r"failed_rows=1: .*invalid JSON")),
    Case("teacher/lone_surrogate_text", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_LONE_SURROGATE")),
         counted(r"failed_rows=1: .*not valid Unicode")),
    Case("teacher/huge_token_count", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_HUGE_TOKEN_COUNT")),
         counted(r"failed_rows=1: .*usage.prompt_tokens is not a token count")),
    Case("teacher/nan_in_json", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_NAN_JSON")),
         counted(r"failed_rows=1: .*invalid JSON")),
    Case("teacher/huge_header_line", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_HUGE_HEADER")),
         counted(r"failed_rows=1: .*connection failed: LineTooLong")),
    Case("teacher/truncated_body", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_TRUNCATED_JSON")),
         counted(r"failed_rows=1: .*(truncated answer|connection failed)")),
    Case("teacher/dropped_connection", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_DROP_CONNECTION")),
         counted(r"failed_rows=1: .*connection failed")),
    Case("teacher/always_500", SERVER, lambda tmp: teacher_row(tmp, _fault("FAULT_HTTP_500")),
         counted(r"failed_rows=1: .*failed after 2 attempts; last error: HTTP 500")),
    Case("teacher/slow_chunked_then_ok", SERVER,
         lambda tmp: teacher_row(tmp, _fault("FAULT_SLOW_CHUNKED"), first_attempt_only=True), counted(RETRIED_OK)),
    Case("teacher/deep_json_then_ok", SERVER,
         lambda tmp: teacher_row(tmp, _fault("FAULT_DEEP_JSON"), first_attempt_only=True), counted(RETRIED_OK)),
    Case("teacher/lone_surrogate_then_ok", SERVER,
         lambda tmp: teacher_row(tmp, _fault("FAULT_LONE_SURROGATE"), first_attempt_only=True), counted(RETRIED_OK)),
    # The teacher entrypoint's configuration mistakes.
    Case("teacher_cli/zero_timeout", CONFIG, lambda tmp: teacher_cli(tmp, "--timeout_s", "0"),
         cli_error(r"exit 2: error: --timeout_s must be a number of seconds > 0, got 0.0")),
    Case("teacher_cli/nan_timeout", CONFIG, lambda tmp: teacher_cli(tmp, "--timeout_s", "nan"),
         cli_error(r"exit 2: error: --timeout_s must be")),
    Case("teacher_cli/negative_size_cap", CONFIG, lambda tmp: teacher_cli(tmp, "--max_response_bytes", "-1"),
         cli_error(r"exit 2: error: --max_response_bytes must be a positive integer, got -1")),
    Case("teacher_cli/zero_concurrency", CONFIG, lambda tmp: teacher_cli(tmp, "--concurrency", "0"),
         cli_error(r"exit 2: error: --concurrency must be a positive integer, got 0")),
    Case("teacher_cli/credentials_in_endpoint", CONFIG,
         lambda tmp: teacher_cli(tmp, "--endpoint", "http://u:sk-secret@127.0.0.1:9/v1"),
         cli_error(r"exit 2: error: endpoint must be a plain base URL(?!.*sk-secret)")),
    Case("teacher_cli/ftp_endpoint", CONFIG, lambda tmp: teacher_cli(tmp, "--endpoint", "ftp://127.0.0.1/v1"),
         cli_error(r"exit 2: error: endpoint must be an http\(s\) URL")),
    Case("teacher_cli/missing_key_file", CONFIG, lambda tmp: teacher_cli(tmp, "--api_key_file", str(tmp / "none")),
         cli_error(r"exit 2: error: --api_key_file .*none: cannot read it")),
    Case("teacher_cli/key_file_with_spaces", CONFIG,
         lambda tmp: teacher_cli(tmp, "--api_key_file", str(write(tmp, "key", "sk-a b\n"))),
         cli_error(r"exit 2: error: .*printable ASCII(?!.*sk-a)")),
    Case("teacher_cli/unknown_benchmark", CONFIG, lambda tmp: teacher_cli(tmp, "--benchmark", "cqaa"),
         cli_error(r"exit 2: error: unknown teacher benchmark 'cqaa'; registered: .*cqa")),
    Case("teacher_cli/missing_data_dir", CONFIG, lambda tmp: teacher_cli(tmp, "--data_dir", str(tmp / "nope")),
         cli_error(r"exit 2: error: --data_dir .*nope is not a folder")),
    Case("teacher_cli/five_stop_sequences", CONFIG, lambda tmp: teacher_cli(tmp, *["--stop", "x"] * 5),
         cli_error(r"exit 2: error: at most 4 stop sequences")),
    # The strict equation metric (issue 17 item 7): scored wrong, never raising, at any stack depth.
    Case("equation/underscore_number", DATA, lambda tmp: equation_score("1_000"), counted(WRONG)),
    Case("equation/inf", DATA, lambda tmp: equation_score("inf"), counted(WRONG)),
    Case("equation/nan", DATA, lambda tmp: equation_score("nan"), counted(WRONG)),
    Case("equation/exponent", DATA, lambda tmp: equation_score("3e0"), counted(WRONG)),
    Case("equation/fullwidth_digits", DATA, lambda tmp: equation_score("( １ + ２ )"), counted(WRONG)),
    Case("equation/arabic_indic_digit", DATA, lambda tmp: equation_score("٣"), counted(WRONG)),
    Case("equation/unary_plus", DATA, lambda tmp: equation_score("+3"), counted(WRONG)),
    Case("equation/no_break_space", DATA, lambda tmp: equation_score("1\u00a0+ 2"), counted(WRONG)),
    Case("equation/trailing_point", DATA, lambda tmp: equation_score("3."), counted(WRONG)),
    Case("equation/python_call", DATA, lambda tmp: equation_score("__import__('os').getcwd()"), counted(WRONG)),
    Case("equation/parentheses_past_max_depth", DATA, lambda tmp: equation_score("(" * 4000 + "3" + ")" * 4000),
         counted(WRONG)),
    Case("equation/deep_parentheses", DATA,
         lambda tmp: equation_score("(" * 100_000 + "3" + ")" * 100_000), counted(WRONG)),
    Case("equation/deep_parentheses_near_recursion_limit", DATA,
         lambda tmp: near_recursion_limit(lambda: equation_score("(" * 150 + "3" + ")" * 150)),
         counted(r"^accuracy=100.0$")),
    Case("equation/long_minus_chain_near_recursion_limit", DATA,  # in the grammar: 9000 minus signs = +3
         lambda tmp: near_recursion_limit(lambda: equation_score("-" * 9000 + "3")), counted(r"^accuracy=100.0$")),
    Case("equation/overflow", DATA, lambda tmp: equation_score("9" * 400 + " * 10"), counted(WRONG)),
    Case("equation/hostile_gold", DATA, lambda tmp: equation_score("3", gold="inf"), counted(WRONG)),
    # Run directories (issue 17 items 1-4): one trainer at a time; a refused rerun writes nothing; a damaged
    # checkpoint is skipped, said and kept aside; metrics.jsonl shows each step once (tests/reliability_run_dir.py).
    Case("run_dir/second_trainer", CONFIG, rd.second_trainer,
         cli_error(r"exit 2: .*in use by another trainer \(host \S+ pid \d+, started ")),
    Case("run_dir/stale_lease_of_another_host", FILE, rd.stale_lease,
         error(r"RunDirLockedError: .*leased by host another-host pid 4242.*looks stale.*delete .*\.lock")),
    Case("run_dir/rerun_other_batch_size", CONFIG, lambda tmp: rd.refused_rerun(tmp, "--gin.InputConfig.batch_size=16"),
         cli_error(r"exit 2: .*1 setting\(s\) differ:\n  input.batch_size: recorded 32, now 16\n")),
    Case("run_dir/rerun_other_seed", CONFIG, lambda tmp: rd.refused_rerun(tmp, "--gin.Experiment.seed=1"),
         cli_error(r"1 setting\(s\) differ:\n  seed: recorded 0, now 1\n")),
    Case("run_dir/rerun_other_labels", CONFIG, lambda tmp: rd.refused_rerun(tmp, "--gin.Experiment.labels='teacher'"),
         cli_error(r"1 setting\(s\) differ:\n  labels: recorded 'gold', now 'teacher'\n")),
    Case("run_dir/rerun_other_lambda", CONFIG, lambda tmp: rd.refused_rerun(tmp, "--gin.Experiment.lam=2.0"),
         cli_error(r"1 setting\(s\) differ:\n  lam: recorded 1.0, now 2.0\n")),
    Case("run_dir/rerun_other_learning_rate", CONFIG,
         lambda tmp: rd.refused_rerun(tmp, "--gin.OptimizerConfig.learning_rate=0.01"),
         cli_error(r"1 setting\(s\) differ:\n  optimizer.learning_rate: recorded 0.003, now 0.01\n")),
    Case("run_dir/rerun_other_model_shape", CONFIG,
         lambda tmp: rd.refused_rerun(tmp, rd.gin_file(tmp, "model_config.overrides = {'vocab_size': 512, "
                                       "'d_model': 64, 'num_heads': 4, 'd_kv': 32, 'd_ff': 256, 'num_encoder_layers': "
                                       "2, 'num_decoder_layers': 2, 'dropout_rate': 0.0}")),
         cli_error(r"exit 2: .*1 setting\(s\) differ:\n  model.d_model: recorded 128, now 64\n(?!.*orbax)")),
    Case("run_dir/rerun_with_more_steps_not_allowed", CONFIG,
         lambda tmp: rd.refused_rerun(tmp, "--gin.TrainConfig.steps=900"),
         cli_error(r"optimizer.total_steps: recorded 800, now 900.*resume_may_change")),
    Case("run_dir/rerun_with_many_changes", CONFIG,
         lambda tmp: rd.refused_rerun(tmp, "--gin.Experiment.seed=1", "--gin.InputConfig.batch_size=8",
                                      "--gin.Experiment.loss_mode='mixture'"),
         cli_error(r"3 setting\(s\) differ:\n  input.batch_size: .*\n  loss_mode: .*\n  seed: ")),
    Case("run_dir/damaged_experiment_json", FILE,
         lambda tmp: write(tmp, "run/experiment.json", "{not json") and rd.entrypoint(tmp, "train"),
         cli_error(r"exit 2: .*experiment.json is not a valid experiment record")),
    Case("run_dir/model_dir_not_a_string", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin.MODEL_DIR=5"),
         cli_error(r"exit 2: .*MODEL_DIR = 5 is not valid: expected a directory path")),
    Case("checkpoint/truncated_latest", FILE, lambda tmp: rd.resume(tmp, "truncate"),
         counted(r"resumed from step 2 \(position 2\): .*step 3: .*OUT_OF_RANGE.*kept aside: \['3'\]")),
    Case("checkpoint/deleted_file_in_latest", FILE, lambda tmp: rd.resume(tmp, "delete"),
         counted(r"resumed from step 2 \(position 2\): .*step 3: .*cannot be read.*kept aside: \['3'\]")),
    Case("checkpoint/empty_metadata_in_latest", FILE, lambda tmp: rd.resume(tmp, "empty_metadata"),
         counted(r"resumed from step 2 .*step 3: .*JSONDecodeError.*kept aside: \['3'\]")),
    Case("checkpoint/empty_data_position_in_latest", FILE, lambda tmp: rd.resume(tmp, "empty_position"),
         counted(r"resumed from step 2 .*step 3: .*cannot be read.*kept aside: \['3'\]")),
    Case("checkpoint/changed_bytes_in_latest", FILE, lambda tmp: rd.resume(tmp, "flip_byte"),
         counted(r"resumed from step 2 .*step 3: .*differ from what was saved \(params/w\).*kept aside: \['3'\]")),
    Case("checkpoint/edited_data_position_in_latest", FILE, lambda tmp: rd.resume(tmp, "edited_position"),
         counted(r"resumed from step 2 \(position 2\): .*step 3: .*data position .*7.* differs from what was saved")),
    Case("checkpoint/checksums_removed_from_latest", FILE, lambda tmp: rd.resume(tmp, "no_checksums"),
         counted(r"resumed from step 2 .*step 3: .*no checksums item, so what it holds cannot be verified")),
    Case("checkpoint/two_newest_damaged", FILE, lambda tmp: rd.resume(tmp, "truncate", damaged=(2, 3)),
         counted(r"resumed from step 1 .*step 3: .*step 2: .*kept aside: \['2', '3'\]")),
    Case("checkpoint/every_step_damaged", FILE, lambda tmp: rd.resume(tmp, "truncate", damaged=(1, 2, 3)),
         error(r"CheckpointRestoreError: no checkpoint in .* restores \(3 step\(s\) tried\):\n  step 3: .*\n  step 2: "
               r".*\n  step 1: ")),
    Case("checkpoint/eval_skips_a_damaged_latest", FILE, lambda tmp: rd.evaluate_params(tmp, "truncate"),
         counted(r"params of step 2: using checkpoint step 2.*step 3: .*steps in place: \['1', '2', '3'\]")),
    Case("checkpoint/eval_of_a_changed_step", FILE, lambda tmp: rd.evaluate_params(tmp, "flip_byte", step=3),
         error(r"CheckpointDamagedError: .*3: 1 array\(s\) differ from what was saved")),
    Case("checkpoint/eval_of_a_step_that_does_not_exist", CONFIG,
         lambda tmp: rd.evaluate_params(tmp, "truncate", damaged=(), step=7),
         error(r"FileNotFoundError: no checkpoint step 7 in .* \(steps: \[1, 2, 3\]\)")),
    Case("metrics/torn_last_line", FILE, rd.torn_metrics, counted(r"^1 record\(s\) read$")),
    Case("metrics/steps_redone_after_a_kill", FILE, rd.redone_steps,
         counted(r"^steps in the file \[1, 2, 3, 4\]; losses \[9.0, 9.0, 1.0, 1.0\]$")),
    # Configuration of train / eval / infer (issue 17 item 5): checked before anything is built.
    Case("train_cli/misspelt_macro", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin.TRAIN_STEPZ=5"),
         cli_error(r"exit 2: .*error: gin macro TRAIN_STEPZ = 5 is set but no setting uses it")),
    Case("train_cli/unused_macro_in_a_gin_file", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", rd.gin_file(tmp, "MODEL_DRI = '/tmp/x'")),
         cli_error(r"gin macro MODEL_DRI = '/tmp/x' is set but no setting uses it .*did you mean MODEL_DIR\?")),
    Case("train_cli/macro_used_but_never_set", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.train.model_dir=%RUN_DIR"),
         cli_error(r"gin macro RUN_DIR is used by train.model_dir but never set")),
    Case("train_cli/missing_model_dir", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", model_dir=False),
         cli_error(r"exit 2: .*error: MODEL_DIR is not set .*--gin.MODEL_DIR=(?!.*TypeError)")),
    Case("train_cli/unquoted_model_dir", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", f"--gin.MODEL_DIR={tmp}/r"),
         cli_error(r"a string value needs quotes, e.g. --gin.MODEL_DIR=\"'.*/r'\"")),
    Case("train_cli/batch_size_as_string", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.InputConfig.batch_size='8'"),
         cli_error(r"InputConfig.batch_size = '8' is not valid: expected an integer(?!.*Traceback)")),
    Case("train_cli/learning_rate_as_string", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.OptimizerConfig.learning_rate='3e-3'"),
         cli_error(r"OptimizerConfig.learning_rate = '3e-3' is not valid: expected a number")),
    Case("train_cli/negative_steps", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin.TrainConfig.steps=-5"),
         cli_error(r"TrainConfig.steps = -5 is not valid: expected an integer >= 1")),
    Case("train_cli/unknown_method", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.Experiment.method='step_by_stepp'"),
         cli_error(r"Experiment.method = 'step_by_stepp' is not valid: expected one of \('step_by_step'")),
    Case("train_cli/zero_mesh_axis", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin.MeshConfig.shape=(0, 1)"),
         cli_error(r"MeshConfig.shape = \(0, 1\) is not valid: expected \(data, model\) sizes")),
    Case("train_cli/unknown_parameter", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.InputConfig.batch_sise=8"),
         cli_error(r"doesn't have a parameter named 'batch_sise'.*Did you mean batch_size\?")),
    Case("train_cli/unknown_configurable", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin.TrainConfg.steps=8"),
         cli_error(r"No configurable matching 'TrainConfg'.*Did you mean TrainConfig")),
    Case("train_cli/unknown_model_setting", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.model_config.overrides={'d_modle': 8}"),
         cli_error(r"model_config.overrides\['d_modle'\] is not a T5Config setting; did you mean d_model\?")),
    Case("train_cli/model_setting_as_string", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.model_config.overrides={'d_model': '128'}"),
         cli_error(r"model_config.overrides\['d_model'\] = '128' is not valid: expected a value of type int")),
    Case("train_cli/unknown_model_name", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "train", "--gin.model_config.name='t5_1_1_tinyy'"),
         cli_error(r"model_config.name = 't5_1_1_tinyy' is not valid: expected one of .*t5_1_1_tiny")),
    Case("train_cli/gin_syntax_error", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin.TrainConfig.steps=(3"),
         cli_error(r"exit 2: .*error: invalid gin configuration")),
    Case("train_cli/missing_gin_file", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin_file=dss_cqa_bsae.gin"),
         cli_error(r"exit 2: .*error: gin file 'dss_cqa_bsae.gin' not found")),
    Case("train_cli/unknown_flag", CONFIG, lambda tmp: rd.entrypoint(tmp, "train", "--gin_flie=x.gin"),
         cli_error(r"exit 2: .*unrecognized arguments: --gin_flie=x.gin")),
    Case("eval_cli/missing_model_dir", CONFIG, lambda tmp: rd.entrypoint(tmp, "eval", model_dir=False),
         cli_error(r"exit 2: .*error: MODEL_DIR is not set \(it is required by evaluate_checkpoint.model_dir\)")),
    Case("eval_cli/not_a_run_directory", CONFIG,
         lambda tmp: (tmp / "run").mkdir() or rd.entrypoint(tmp, "eval"),
         cli_error(r"exit 2: .*error: .*experiment.json not found: .*run is not a run directory")),
    Case("eval_cli/damaged_experiment_json", FILE,
         lambda tmp: write(tmp, "run/experiment.json", '{"experiment": {"seed": 0}}') and rd.entrypoint(tmp, "eval"),
         cli_error(r"exit 2: .*error: .*experiment.json is not a valid experiment record")),
    Case("eval_cli/misspelt_split", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "eval", "--gin.evaluate_checkpoint.split='tset'"),
         cli_error(r"evaluate_checkpoint.split = 'tset' is not valid: expected 'train', 'validation' or 'test'")),
    Case("eval_cli/step_as_string", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "eval", "--gin.evaluate_checkpoint.step='latest'"),
         cli_error(r"evaluate_checkpoint.step = 'latest' is not valid: expected an integer or None")),
    Case("eval_cli/misspelt_macro", CONFIG, lambda tmp: rd.entrypoint(tmp, "eval", "--gin.MODEL_DIRR='/x'"),
         cli_error(r"gin macro MODEL_DIRR = '/x' is set but no setting uses it .*did you mean MODEL_DIR\?")),
    Case("infer_cli/missing_output", CONFIG, lambda tmp: rd.entrypoint(tmp, "infer", "--gin.OUTPUT=%gin.REQUIRED"),
         cli_error(r"exit 2: .*error: OUTPUT is not set \(it is required by infer.output\)")),
    Case("infer_cli/missing_model_dir", CONFIG, lambda tmp: rd.entrypoint(tmp, "infer", model_dir=False),
         cli_error(r"exit 2: .*error: MODEL_DIR is not set \(it is required by infer.model_dir\)")),
    Case("infer_cli/misspelt_split", CONFIG, lambda tmp: rd.entrypoint(tmp, "infer", "--gin.infer.split='dev'"),
         cli_error(r"infer.split = 'dev' is not valid: expected 'train', 'validation' or 'test'")),
    Case("infer_cli/zero_examples", CONFIG, lambda tmp: rd.entrypoint(tmp, "infer", "--gin.infer.max_examples=0"),
         cli_error(r"infer.max_examples = 0 is not valid: expected an integer >= 1")),
    Case("infer_cli/rationales_as_string", CONFIG,
         lambda tmp: rd.entrypoint(tmp, "infer", "--gin.infer.rationales='yes'"),
         cli_error(r"infer.rationales = 'yes' is not valid: expected True or False")),
    # Configuration of plan / sweep / data (issue 17 item 5).
    Case("plan_cli/misspelt_macro", CONFIG, lambda tmp: rd.plan_cli(tmp, "--gin.TRAIN_STEPZ=5"),
         cli_error(r"exit 2: .*error: gin macro TRAIN_STEPZ = 5 is set but no setting uses it")),
    Case("plan_cli/batch_size_as_string", CONFIG, lambda tmp: rd.plan_cli(tmp, "--gin.InputConfig.batch_size='8'"),
         cli_error(r"exit 2: .*InputConfig.batch_size = '8' is not valid: expected an integer")),
    Case("plan_cli/unknown_parameter", CONFIG, lambda tmp: rd.plan_cli(tmp, "--gin.InputConfig.batch_sise=8"),
         cli_error(r"exit 2: .*Did you mean batch_size\?")),
    Case("plan_cli/unknown_model", CONFIG, lambda tmp: rd.plan_cli(tmp, "--model=t5_1_1_tinyy"),
         cli_error(r"exit 2: .*gin file 'models/t5_1_1_tinyy.gin' not found")),
    Case("plan_cli/mesh_that_does_not_divide", CONFIG, lambda tmp: rd.plan_cli(tmp, "--mesh=data:3,model:1"),
         cli_error(r"exit 2: .*--mesh .* does not divide 1 devices")),
    Case("sweep_cli/misspelt_macro", CONFIG, lambda tmp: rd.sweep_cli(tmp, "--gin.SWEEP_DRI='/tmp/x'"),
         cli_error(r"exit 2: .*gin macro SWEEP_DRI = '/tmp/x' is set but no setting uses it.*did you mean SWEEP_DIR")),
    Case("sweep_cli/missing_sweep_dir", CONFIG, lambda tmp: rd.sweep_cli(tmp, sweep_dir=False),
         cli_error(r"exit 2: .*SWEEP_DIR is not set")),
    Case("sweep_cli/seeds_as_string", CONFIG, lambda tmp: rd.sweep_cli(tmp, "--gin.Sweep.seeds='0'"),
         cli_error(r"exit 2: .*Sweep.seeds = '0' is not valid")),
    Case("sweep_cli/unknown_method", CONFIG, lambda tmp: rd.sweep_cli(tmp, "--gin.Sweep.methods=['step_by_stepp']"),
         cli_error(r"exit 2: .*'step_by_stepp' is not a method")),
    Case("sweep_cli/report_of_a_missing_directory", CONFIG, lambda tmp: rd.sweep_report(tmp / "nowhere"),
         cli_error(r"exit 2: .*nowhere does not exist")),
    Case("data_cli/unknown_benchmark", CONFIG, lambda tmp: rd.data_cli(tmp, "validate", "--benchmark", "cqaa"),
         cli_error(r"exit 2: .*invalid choice: 'cqaa'")),
    Case("data_cli/fraction_out_of_range", CONFIG,
         lambda tmp: rd.data_cli(tmp, "validate", "--benchmark", "arith", "--fraction", "2.0"),
         cli_error(r"exit 2: .*training fraction must be in \(0, 1\], got 2.0")),
    Case("data_cli/validate_a_missing_data_dir", CONFIG,
         lambda tmp: rd.data_cli(tmp, "validate", "--benchmark", "cqa", "--data_dir", str(tmp / "none")),
         cli_error(r"exit 2: .*data directory .*none does not exist")),
    Case("data_cli/train_vocab_from_a_missing_file", CONFIG,
         lambda tmp: rd.data_cli(tmp, "train_vocab", "--input", str(tmp / "none.txt"), "--output", str(tmp / "x.model")),
         cli_error(r"exit 2: .*--input file .*none.txt does not exist")),
]
