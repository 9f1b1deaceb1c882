"""The reliability suite: every bad input in tests/reliability_cases.py gets a clear error or a counted skip.

Each row of `reliability_cases.CASES` is one parametrized test (its id is the case id). At the end
of the session the terminal summary says "reliability: N cases tried, M handled cleanly" and names
the cases that were not (tests/reliability_report.py). Add cases in reliability_cases.py, not here.
"""
import threading

import pytest

import reliability_cases
import reliability_report
from reliability_cases import CASES, Case, judge

@pytest.fixture(scope="session", autouse=True)
def _reliability_summary(request):
    reliability_report.register(request.config)  # prints the count at the end of the session
    yield


def run_case(case: Case, work_dir):
    """Run one case in a worker thread under its time limit: (handled cleanly, what happened)."""
    box = {}

    def target():
        try:
            box["returned"] = case.run(work_dir)
        except BaseException as e:  # noqa: BLE001 - judged below: raw exception types are not clean
            box["raised"] = e

    worker = threading.Thread(target=target, name=f"reliability-{case.id}", daemon=True)
    worker.start()
    worker.join(case.timeout_s)
    if worker.is_alive():
        return False, f"still running after {case.timeout_s:g}s (a hang)"
    return judge(case, box.get("returned"), box.get("raised"))


def test_case_ids_are_unique_and_kinds_known():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert {case.kind for case in CASES} <= set(reliability_cases.KINDS)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_handled_cleanly(case, tmp_path):
    ok, what = run_case(case, tmp_path)
    assert ok, f"{case.id} ({case.kind}): {what}"


def _case(run, expect):
    return Case("self-test", reliability_cases.CONFIG, run, expect, timeout_s=2.0)


def _raise(error):
    raise error


def test_the_judge_calls_a_raw_traceback_unclean_even_when_its_text_matches():
    case = _case(lambda tmp: _raise(KeyError("setting")), reliability_cases.error("setting"))
    assert run_case(case, None)[0] is False
    case = _case(lambda tmp: b"\xff".decode("utf-8"), reliability_cases.error("decode"))
    assert run_case(case, None)[0] is False


def test_the_judge_calls_a_hang_unclean():
    event = threading.Event()
    case = Case("self-test", reliability_cases.SERVER, lambda tmp: event.wait(5), reliability_cases.counted(""),
                timeout_s=0.2)
    ok, what = run_case(case, None)
    event.set()
    assert not ok and "a hang" in what


def test_the_judge_wants_the_promised_outcome_and_message():
    assert run_case(_case(lambda tmp: "skipped 1 row", reliability_cases.counted(r"skipped 1")), None)[0]
    assert not run_case(_case(lambda tmp: "done", reliability_cases.error("bad")), None)[0]
    assert not run_case(_case(lambda tmp: _raise(ValueError("other")), reliability_cases.error("bad")), None)[0]
    assert run_case(_case(lambda tmp: _raise(ValueError("bad x")), reliability_cases.error("bad x")), None)[0]
