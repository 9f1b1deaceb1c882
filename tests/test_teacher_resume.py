"""A teacher run killed with SIGKILL resumes from its cache: no lost, duplicated or re-asked rows."""
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time

from dss_jax.teacher import cli
from teacher_server import FakeServerConfig, FakeTeacherServer, query_hash

from test_teacher_run import copy_rows, cqa_picks_choice_a, query_for_row

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_ROWS = 60
WAIT_LIMIT_S = 60.0


def cached_rows(cache_path):
    """Row indices in the cache, read without disturbing a writer (0 rows if not there yet)."""
    if not cache_path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{cache_path}?mode=ro", uri=True, timeout=5) as db:
            return {row for (row,) in db.execute("SELECT row_index FROM completions")}
    except sqlite3.OperationalError:  # the table is not created yet
        return set()


def cli_args(data_dir, out_dir, endpoint):
    return ["--benchmark", "cqa", "--split", "train", "--data_dir", str(data_dir), "--out_dir", str(out_dir),
            "--endpoint", endpoint, "--model", "m", "--concurrency", "2", "--no_progress"]


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_output(tmp_path, dss_data_dir):
    data_dir = tmp_path / "data"
    rows = copy_rows(dss_data_dir, data_dir, "cqa", "train", NUM_ROWS)
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    cache_path = killed_out / "teacher_runs" / "cache.sqlite"
    log_path = tmp_path / "server_requests.jsonl"
    config = FakeServerConfig(completion_for_query=cqa_picks_choice_a, response_delay_s=0.1,
                              log_path=str(log_path))
    with FakeTeacherServer(config) as server, open(tmp_path / "killed_run.stderr", "wb") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "dss_jax.teacher", *cli_args(data_dir, killed_out, server.base_url)],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr_file,
        )
        try:
            deadline = time.monotonic() + WAIT_LIMIT_S
            while len(cached_rows(cache_path)) < 5 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.02)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, (tmp_path / "killed_run.stderr").read_text()
        time.sleep(0.2)  # let requests the killed process had sent reach the log
        done_before_kill = cached_rows(cache_path)
        requests_before_rerun = len(server.log_snapshot())
        assert 5 <= len(done_before_kill) < NUM_ROWS
        assert not (killed_out / "cqa" / "llm").exists()  # no partial output file
        server.config.response_delay_s = 0.0

        assert cli.main(cli_args(data_dir, killed_out, server.base_url)) == 0
        rerun_requests = server.log_snapshot()[requests_before_rerun:]
        assert cli.main(cli_args(data_dir, clean_out, server.base_url)) == 0

    hash_to_row = {query_hash(query_for_row("cqa", row)): i for i, row in enumerate(rows)}
    rerun_rows = [hash_to_row[entry["query_hash"]] for entry in rerun_requests]
    assert sorted(rerun_rows) == sorted(set(range(NUM_ROWS)) - done_before_kill)  # each missing row once
    killed_file = killed_out / "cqa" / "llm" / "train_CoT_0.json"
    assert killed_file.read_bytes() == (clean_out / "cqa" / "llm" / "train_CoT_0.json").read_bytes()
    assert len(json.loads(killed_file.read_text())) == NUM_ROWS
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(logged) == len(server.log_snapshot())  # the server's file log saw every request
