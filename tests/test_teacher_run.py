"""Teacher runs end to end against a misbehaving local server: exactly-once rows, the
datasets.zip layout read back by dss_jax.data.readers, resumption from the cache, failure
reports, and an API key that never leaks."""
import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
import time

import pytest

from dss_jax.data import readers
from dss_jax.teacher import cli
from dss_jax.teacher.benchmarks import get_benchmark
from dss_jax.teacher.cache import CompletionCache
from dss_jax.teacher.client import GenerationConfig, RetryPolicy, TeacherClient
from teacher_server import (
    ALL_FAULTS,
    FAULT_ECHO_KEY_IN_ERROR,
    FAULT_ECHO_KEY_IN_TEXT,
    FAULT_HTTP_500,
    FAULT_HUGE_ANSWER,
    FAULT_HUGE_CHUNKED,
    FAULT_SLOW,
    FAULT_SLOW_CHUNKED,
    FAULT_TRICKLE_BODY,
    HOSTILE_FAULTS,
    FakeServerConfig,
    FakeTeacherServer,
    query_of,
)
from dss_jax.teacher.runner import default_cache_path, run_teacher

SECRET_KEY = "sk-live-SECRET-never-write-me-42"


def copy_rows(dss_data_dir, data_dir, benchmark, file_split, n):
    """The first n rows of a reference split file, in a fresh data dir of the same layout."""
    source = dss_data_dir / benchmark / f"{benchmark}_{file_split}.json"
    lines = source.read_text(encoding="utf-8").splitlines()[:n]
    target = data_dir / benchmark / f"{benchmark}_{file_split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [json.loads(line) for line in lines]


def query_for_row(benchmark_name, row):
    """The query block the server sees for a row (the prompt's last block)."""
    benchmark = get_benchmark(benchmark_name)
    return query_of(benchmark.template().render(benchmark.prompt_fields(row, "test row")))


def digest(query):
    return hashlib.sha256(query.encode("utf-8")).hexdigest()[:12]


def cqa_picks_choice_a(query):
    """A fake teacher that always answers choice (a), naming the query's hash."""
    first_choice = re.search(r"^\(a\) (.*)$", query, flags=re.M).group(1)
    return f" The answer must be {digest(query)}. So the answer is (a) {first_choice}."


def nli_says_entailment(query):
    return f" Reason {digest(query)}.\nAnswer: entailment"


def fast_client(server, **kwargs):
    kwargs.setdefault("timeout_s", 5.0)
    kwargs.setdefault("retry", RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05))
    return TeacherClient(server.base_url, "teacher-model", seed=0, **kwargs)


def read_output(out_dir, benchmark, file_split):
    files = sorted((out_dir / benchmark / "llm").glob(f"{file_split}_CoT_*.json"))
    return [c for f in files for c in json.loads(f.read_text(encoding="utf-8"))]


@pytest.fixture
def cqa_data(tmp_path, dss_data_dir):
    data_dir = tmp_path / "data"
    rows = copy_rows(dss_data_dir, data_dir, "cqa", "train", 24)
    return data_dir, rows


def test_every_row_ends_up_once_with_the_completion_meant_for_it_despite_faults(tmp_path, cqa_data):
    data_dir, rows = cqa_data
    queries = [query_for_row("cqa", row) for row in rows]
    fault_by_query = {q: ALL_FAULTS[i % len(ALL_FAULTS)] for i, q in enumerate(queries[:12])}
    second_fault = {q: FAULT_HTTP_500 for q in queries[:3]}  # a few rows fail twice

    def plan(query, attempt):
        if attempt == 1:
            return fault_by_query.get(query)
        return second_fault.get(query) if attempt == 2 else None

    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a, fault_plan=plan, slow_s=1.5)
    with FakeTeacherServer(config) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out",
                             fast_client(server, timeout_s=1.0), concurrency=4)
        outcomes = {entry["outcome"] for entry in server.log_snapshot()}
    assert read_output(tmp_path / "out", "cqa", "train") == [cqa_picks_choice_a(q).lstrip() for q in queries]
    assert set(ALL_FAULTS) <= outcomes
    assert report.complete and report.rows_done == 24 and report.rows_requested_now == 24


def test_a_rerun_sends_no_requests_and_writes_the_same_files(tmp_path, cqa_data):
    data_dir, _ = cqa_data
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a)
    with FakeTeacherServer(config) as server:
        run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server))
        first = (tmp_path / "out" / "cqa" / "llm" / "train_CoT_0.json").read_bytes()
        requests_after_first = len(server.log_snapshot())
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server))
        assert len(server.log_snapshot()) == requests_after_first
    assert report.rows_from_cache == 24 and report.rows_requested_now == 0
    assert (tmp_path / "out" / "cqa" / "llm" / "train_CoT_0.json").read_bytes() == first


def test_the_output_feeds_the_data_readers_with_no_conversion(tmp_path, cqa_data):
    data_dir, rows = cqa_data
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a)
    with FakeTeacherServer(config) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", data_dir, fast_client(server))
    train = readers.load_split("cqa", "train", data_dir=data_dir).examples
    validation = readers.load_split("cqa", "validation", data_dir=data_dir).examples
    examples = sorted(train + validation, key=lambda e: e.example_id)
    assert [e.teacher_label for e in examples] == [row["choices"][0] for row in rows]
    assert all(e.parse_status == "ok" for e in examples)
    expected_accuracy = sum(row["answer"] == row["choices"][0] for row in rows) / len(rows)
    assert report.teacher_accuracy == pytest.approx(expected_accuracy)
    assert report.parse_status_counts == {"ok": 24}


def test_an_nli_valid_split_in_chat_mode_reads_back_as_validation(tmp_path, dss_data_dir):
    data_dir = tmp_path / "data"
    rows = copy_rows(dss_data_dir, data_dir, "esnli", "valid", 8)
    config = FakeServerConfig(completion_for_query=nli_says_entailment)
    with FakeTeacherServer(config) as server:
        report = run_teacher(get_benchmark("esnli"), data_dir, "validation", data_dir, fast_client(server, chat=True))
        stops = {tuple(entry["stop"]) for entry in server.log_snapshot()}
    assert (data_dir / "esnli" / "llm" / "valid_CoT_0.json").is_file()
    assert stops == {("\n\nPremise:",)}
    examples = readers.load_split("esnli", "validation", data_dir=data_dir).examples
    assert [e.teacher_label for e in examples] == ["entailment"] * len(rows)
    assert report.teacher_accuracy == pytest.approx(sum(r["label"] == 0 for r in rows) / len(rows))


def test_output_files_hold_b_rows_each_in_row_order(tmp_path, cqa_data):
    data_dir, rows = cqa_data
    benchmark = dataclasses.replace(get_benchmark("cqa"), rows_per_file=10)
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a)
    with FakeTeacherServer(config) as server:
        run_teacher(benchmark, data_dir, "train", tmp_path / "out", fast_client(server))
    llm_dir = tmp_path / "out" / "cqa" / "llm"
    sizes = [len(json.loads((llm_dir / f"train_CoT_{i}.json").read_text())) for i in range(3)]
    assert sizes == [10, 10, 4]
    assert sorted(p.name for p in llm_dir.iterdir()) == [f"train_CoT_{i}.json" for i in range(3)]


def test_limit_annotates_only_the_first_rows(tmp_path, cqa_data):
    data_dir, rows = cqa_data
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a)
    with FakeTeacherServer(config) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server), limit=5)
        assert len(server.log_snapshot()) == 5
    assert read_output(tmp_path / "out", "cqa", "train") == [
        cqa_picks_choice_a(query_for_row("cqa", row)).lstrip() for row in rows[:5]
    ]
    assert report.rows_requested == 5


def test_rows_that_fail_for_good_are_named_and_a_rerun_fills_only_them(tmp_path, cqa_data):
    data_dir, rows = cqa_data
    broken = {query_for_row("cqa", rows[i]) for i in (3, 17)}
    failing = FakeServerConfig(completion_for_query=cqa_picks_choice_a,
                               fault_plan=lambda query, attempt: FAULT_HTTP_500 if query in broken else None)
    with FakeTeacherServer(failing) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server))
    assert sorted(report.failed_rows) == [3, 17]
    assert "failed after 4 attempts" in report.failed_rows[3]
    assert not report.complete and report.output_files == []
    assert not (tmp_path / "out" / "cqa" / "llm").exists()

    with FakeTeacherServer(FakeServerConfig(completion_for_query=cqa_picks_choice_a)) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server))
        assert sorted(e["query_hash"] for e in server.log_snapshot()) == sorted(
            hashlib.sha256(q.encode()).hexdigest()[:16] for q in broken)
    assert report.complete and len(read_output(tmp_path / "out", "cqa", "train")) == 24


def test_too_many_failed_rows_stop_the_run_early(tmp_path, cqa_data):
    data_dir, _ = cqa_data
    always_500 = FakeServerConfig(fault_plan=lambda query, attempt: FAULT_HTTP_500)
    with FakeTeacherServer(always_500) as server:
        client = fast_client(server, retry=RetryPolicy(max_retries=0))
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", client,
                             concurrency=1, max_failed_rows=2)
        requests_sent = len(server.log_snapshot())
    # The third failure stops new requests; the one already queued (2 x concurrency in flight) still ends.
    assert report.aborted and 3 <= len(report.failed_rows) <= 4
    assert requests_sent == len(report.failed_rows)


def test_an_edited_prompt_asks_the_teacher_again(tmp_path, cqa_data):
    data_dir, _ = cqa_data
    benchmark = get_benchmark("cqa")
    edited = tmp_path / "cqa_edited.txt"
    edited.write_text(benchmark.template().text.replace("linen closet", "linen cupboard"))
    with FakeTeacherServer(FakeServerConfig(completion_for_query=cqa_picks_choice_a)) as server:
        run_teacher(benchmark, data_dir, "train", tmp_path / "out", fast_client(server), limit=4)
        report = run_teacher(dataclasses.replace(benchmark, prompt_file=str(edited)), data_dir, "train",
                             tmp_path / "out", fast_client(server), limit=4)
        assert len(server.log_snapshot()) == 8
    assert report.rows_from_cache == 0


def test_the_cli_writes_the_layout_and_reports_tokens(tmp_path, cqa_data, capsys):
    data_dir, _ = cqa_data
    with FakeTeacherServer(FakeServerConfig(completion_for_query=cqa_picks_choice_a)) as server:
        status = cli.main(["--benchmark", "cqa", "--split", "train", "--data_dir", str(data_dir),
                           "--out_dir", str(tmp_path / "out"), "--endpoint", server.base_url,
                           "--model", "m", "--concurrency", "3", "--no_progress"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["complete"]
    assert report["completion_tokens_total"] > 0 and report["prompt_tokens_total"] > 0
    saved = json.loads((tmp_path / "out" / "teacher_runs" / "cqa_train_report.json").read_text())
    assert saved["rows_done"] == 24


def test_the_cli_exits_1_when_rows_fail_and_2_without_an_endpoint(tmp_path, cqa_data, monkeypatch, capsys):
    data_dir, _ = cqa_data
    monkeypatch.delenv("DSS_TEACHER_ENDPOINT", raising=False)
    args = ["--benchmark", "cqa", "--split", "train", "--data_dir", str(data_dir),
            "--out_dir", str(tmp_path / "out"), "--model", "m", "--no_progress", "--max_retries", "0"]
    assert cli.main(args) == 2
    with FakeTeacherServer(FakeServerConfig(fault_plan=lambda q, a: FAULT_HTTP_500)) as server:
        assert cli.main(args + ["--endpoint", server.base_url, "--limit", "2"]) == 1
    assert "Rerun the same command to resume" in capsys.readouterr().err


def test_the_api_key_never_reaches_logs_output_files_or_the_cache(tmp_path, cqa_data, monkeypatch, capsys, caplog):
    data_dir, rows = cqa_data
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DSS_TEACHER_API_KEY", SECRET_KEY)
    out_dir = tmp_path / "out"
    flaky = {query_for_row("cqa", rows[i]): fault for i, fault in enumerate(ALL_FAULTS) if fault != FAULT_SLOW}
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a, expected_api_key=SECRET_KEY,
                              fault_plan=lambda query, attempt: flaky.get(query) if attempt == 1 else None)
    with FakeTeacherServer(config) as server:
        status = cli.main(["--benchmark", "cqa", "--split", "train", "--data_dir", str(data_dir),
                           "--out_dir", str(out_dir), "--endpoint", server.base_url, "--model", "m",
                           "--backoff_base_s", "0.01", "--no_progress"])
        assert all(entry["outcome"] != "http_401" for entry in server.log_snapshot())
    captured = capsys.readouterr()
    assert status == 0
    assert "retry" in caplog.text  # the faults were logged ...
    assert SECRET_KEY not in caplog.text + captured.out + captured.err  # ... without the key
    written = [p for p in out_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written)
    for path in written:
        assert SECRET_KEY.encode() not in path.read_bytes(), path


def test_the_cache_keeps_one_entry_per_row_and_request(tmp_path, cqa_data):
    data_dir, _ = cqa_data
    with FakeTeacherServer(FakeServerConfig(completion_for_query=cqa_picks_choice_a)) as server:
        for _ in range(2):
            run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server))
    with CompletionCache(str(default_cache_path(tmp_path / "out"))) as cache:
        assert cache.count("cqa", "train") == 24


def test_an_unknown_split_is_a_named_missing_file_error(tmp_path, cqa_data):
    data_dir, _ = cqa_data
    with FakeTeacherServer() as server:
        with pytest.raises(readers.DataFileMissingError, match="cqa_test.json"):
            run_teacher(get_benchmark("cqa"), data_dir, "test", tmp_path / "out", fast_client(server))


def test_greedy_generation_with_the_benchmarks_stop_is_the_default(tmp_path, cqa_data):
    data_dir, _ = cqa_data
    with FakeTeacherServer(FakeServerConfig(completion_for_query=cqa_picks_choice_a)) as server:
        run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server), limit=2)
        entries = server.log_snapshot()
    assert {(e["temperature"], tuple(e["stop"])) for e in entries} == {(0.0, ("\n\nQ:",))}
    assert GenerationConfig().temperature == 0.0


def adds_the_first_two_numbers(query):
    a, b = re.findall(r"\d+", query)[:2]
    return f" {a} + {b} = {int(a) + int(b)}. The answer is ({a} + {b})."


def test_math_benchmarks_score_the_teacher_by_equation_value(tmp_path):
    data_dir = tmp_path / "data"
    rows = [
        {"input": "Tom has 3 apples. He finds 4 more apples.\nHow many apples does Tom have now?", "label": "( 3.0 + 4.0 )"},
        {"input": "Mia has 10 cards. She finds 5 more cards.\nHow many cards does Mia have now?", "label": "( 5.0 + 10.0 )"},
        {"input": "Ben had 9 cups. He gave 2 cups away.\nHow many cups does Ben have left?", "label": "( 9.0 - 2.0 )"},
    ]
    (data_dir / "arith").mkdir(parents=True)
    (data_dir / "arith" / "arith_valid.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeTeacherServer(FakeServerConfig(completion_for_query=adds_the_first_two_numbers)) as server:
        report = run_teacher(get_benchmark("arith"), data_dir, "valid", data_dir, fast_client(server))
    assert report.teacher_accuracy == pytest.approx(2 / 3)
    examples = readers.load_split("arith", "validation", data_dir=data_dir).examples
    assert [e.teacher_label for e in examples] == ["(3 + 4)", "(10 + 5)", "(9 + 2)"]


USER_BENCHMARK_MODULE = '''
import json, pathlib
from dss_jax.data.parsing import ParsedTeacher, OK, NO_ANSWER_MARKER
from dss_jax.teacher import TeacherBenchmark, register_benchmark

def read_rows(data_dir, split):
    path = pathlib.Path(data_dir) / "yesno" / f"yesno_{split}.json"
    return [json.loads(line) for line in path.read_text().splitlines()]

def parse(completion):
    rationale, sep, label = completion.partition(" Verdict: ")
    return ParsedTeacher(rationale, label.rstrip("."), OK if sep else NO_ANSWER_MARKER)

register_benchmark(TeacherBenchmark(
    name="yesno", prompt_file=str(pathlib.Path(__file__).with_name("yesno.txt")),
    prompt_fields=lambda row, where: {"text": row["text"]}, stop=("\\n\\nQ:",), rows_per_file=2,
    read_rows=read_rows, gold_label=lambda row, where: row.get("answer"), parse=parse,
    accuracy=lambda golds, labels: sum(g == l for g, l in zip(golds, labels)) / len(golds)))
'''


def test_the_cli_runs_a_benchmark_that_a_user_module_registers(tmp_path, monkeypatch, capsys):
    from dss_jax.teacher import benchmarks as benchmarks_module

    monkeypatch.setattr(benchmarks_module, "_REGISTRY", dict(benchmarks_module._REGISTRY))
    (tmp_path / "user_yesno_benchmark.py").write_text(USER_BENCHMARK_MODULE)
    (tmp_path / "yesno.txt").write_text("Q: Is ice cold?\nA: Ice is frozen. Verdict: yes.\n\nQ: {{text}}\nA:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"text": "Is fire hot?", "answer": "yes"}, {"text": "Is snow hot?", "answer": "no"},
            {"text": "Is tea wet?", "answer": "yes"}]
    (tmp_path / "data" / "yesno").mkdir(parents=True)
    (tmp_path / "data" / "yesno" / "yesno_train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeTeacherServer(FakeServerConfig(completion_for_query=lambda q: " Thought. Verdict: yes.")) as server:
        status = cli.main(["--import", "user_yesno_benchmark", "--benchmark", "yesno", "--split", "train",
                           "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"),
                           "--endpoint", server.base_url, "--model", "m", "--no_progress"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["teacher_accuracy"] == pytest.approx(2 / 3)
    assert [len(json.loads((tmp_path / "out" / "yesno" / "llm" / f"train_CoT_{i}.json").read_text()))
            for i in range(2)] == [2, 1]


def key_forms(key):
    """The key as a hostile server might hand it back: plain, any case, base64'd inside a header dump."""
    forms = {key, key.lower(), key.upper()}
    for prefix in ("", "Bearer ", "Authorization: Bearer ", "x"):
        encoded = base64.b64encode((prefix + key).encode()).decode()
        forms.add(encoded[len(prefix) * 4 // 3 + 4 : -4])  # the part that encodes only the key
    return {form.encode() for form in forms}


def test_a_server_echoing_the_key_back_gets_it_into_no_file_and_no_log(tmp_path, cqa_data, monkeypatch,
                                                                        capsys, caplog):
    data_dir, rows = cqa_data
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DSS_TEACHER_API_KEY", SECRET_KEY)
    echo = {query_for_row("cqa", rows[0]): FAULT_ECHO_KEY_IN_ERROR,
            query_for_row("cqa", rows[1]): FAULT_ECHO_KEY_IN_TEXT}
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a, fault_plan=lambda q, a: echo.get(q))
    out_dir = tmp_path / "out"
    with FakeTeacherServer(config) as server:
        status = cli.main(["--benchmark", "cqa", "--split", "train", "--data_dir", str(data_dir),
                           "--out_dir", str(out_dir), "--endpoint", server.base_url, "--model", "m",
                           "--backoff_base_s", "0.01", "--no_progress"])
    captured = capsys.readouterr()
    report = json.loads((out_dir / "teacher_runs" / "cqa_train_report.json").read_text())
    assert status == 1 and sorted(report["failed_rows"]) == ["0", "1"]
    assert "HTTP 400" in report["failed_rows"]["0"] and "contains the API key" in report["failed_rows"]["1"]
    shown = (caplog.text + captured.out + captured.err).encode()
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        for form in key_forms(SECRET_KEY):
            assert form not in path.read_bytes(), (path, form)
            assert form not in shown, form


@pytest.mark.parametrize("fault", [FAULT_HUGE_ANSWER, FAULT_HUGE_CHUNKED])
def test_an_oversized_answer_is_a_counted_failed_row_never_stored_or_written(tmp_path, cqa_data, fault):
    data_dir, rows = cqa_data
    huge = query_for_row("cqa", rows[5])
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a, huge_bytes=3 << 20,
                              fault_plan=lambda q, a: fault if q == huge else None)
    out_dir = tmp_path / "out"
    with FakeTeacherServer(config) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", out_dir, fast_client(server))
        assert sum(entry["query_hash"] == hashlib.sha256(huge.encode()).hexdigest()[:16]
                   for entry in server.log_snapshot()) == 1  # refused at once, not retried
    assert list(report.failed_rows) == [5] and "max_response_bytes" in report.failed_rows[5]
    assert report.rows_done == 23 and report.output_files == []
    assert sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) < 1 << 20


@pytest.mark.parametrize("fault", [FAULT_TRICKLE_BODY, FAULT_SLOW_CHUNKED])
def test_a_row_whose_answer_never_finishes_fails_by_the_deadline_and_the_run_ends(tmp_path, cqa_data, fault):
    data_dir, rows = cqa_data
    stuck = query_for_row("cqa", rows[2])
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a, trickle_interval_s=0.05, trickle_max_s=15.0,
                              trickle_content_length=500_000, fault_plan=lambda q, a: fault if q == stuck else None)
    started = time.monotonic()
    with FakeTeacherServer(config) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out",
                             fast_client(server, timeout_s=0.5, retry=RetryPolicy(max_retries=1, backoff_base_s=0.01)))
    assert time.monotonic() - started < 6.0
    assert list(report.failed_rows) == [2] and "total deadline of 0.5s" in report.failed_rows[2]
    assert report.rows_done == 23


def test_hostile_answers_never_crash_a_run_and_retries_fill_every_row(tmp_path, cqa_data):
    data_dir, rows = cqa_data
    retried = [f for f in HOSTILE_FAULTS if f not in (FAULT_HUGE_ANSWER, FAULT_HUGE_CHUNKED, FAULT_ECHO_KEY_IN_ERROR,
                                                    FAULT_ECHO_KEY_IN_TEXT, FAULT_TRICKLE_BODY)]
    first_fault = {query_for_row("cqa", rows[i]): fault for i, fault in enumerate(retried)}
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a, trickle_interval_s=0.05, trickle_max_s=15.0,
                              trickle_content_length=500_000,
                              fault_plan=lambda q, a: first_fault.get(q) if a == 1 else None)
    with FakeTeacherServer(config) as server:
        report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out",
                             fast_client(server, timeout_s=0.5), concurrency=4)
        outcomes = {entry["outcome"] for entry in server.log_snapshot()}
    assert set(retried) <= outcomes
    assert report.complete
    assert read_output(tmp_path / "out", "cqa", "train") == [cqa_picks_choice_a(query_for_row("cqa", r)).lstrip()
                                                             for r in rows]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_every_file_a_run_writes_gets_the_users_normal_permissions(tmp_path, cqa_data, umask):
    data_dir, _ = cqa_data
    previous = os.umask(umask)
    try:
        with FakeTeacherServer(FakeServerConfig(completion_for_query=cqa_picks_choice_a)) as server:
            report = run_teacher(get_benchmark("cqa"), data_dir, "train", tmp_path / "out", fast_client(server))
    finally:
        os.umask(previous)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert report.complete and {p.name for p in written} >= {"train_CoT_0.json", "cqa_train_report.json",
                                                              "cache.sqlite"}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
