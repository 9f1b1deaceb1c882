"""The teacher client against a misbehaving local OpenAI-compatible server (127.0.0.1 only)."""
import datetime
import logging
import random

import pytest

from dss_jax.teacher.client import (
    GenerationConfig,
    RetryPolicy,
    Secret,
    TeacherClient,
    TeacherRequestError,
    parse_retry_after,
    redact,
    resolve_api_key,
)
from dss_jax.teacher.fake_server import (
    FAULT_DROP_CONNECTION,
    FAULT_HTTP_429,
    FAULT_HTTP_500,
    FAULT_INVALID_JSON,
    FAULT_SLOW,
    FAULT_TRUNCATED_JSON,
    FakeServerConfig,
    FakeTeacherServer,
    echo_completion,
)

PROMPT = "Q: exemplar?\nA: yes. So the answer is (a) yes.\n\nQ: What is the row's question?\nA:"
QUERY = "Q: What is the row's question?\nA:"
SECRET_KEY = "sk-test-DO-NOT-LEAK-0123456789"


class RecordingSleep:
    """Stands in for time.sleep: records the waits and does not sleep."""

    def __init__(self):
        self.waits = []

    def __call__(self, seconds):
        self.waits.append(seconds)


def faults_on_first_attempts(*faults):
    """A fault plan: attempt k (from 1) of every query gets faults[k-1], then success."""
    return lambda query, attempt: faults[attempt - 1] if attempt <= len(faults) else None


def make_client(server, sleep=None, **kwargs):
    kwargs.setdefault("retry", RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05))
    kwargs.setdefault("timeout_s", 5.0)
    return TeacherClient(server.base_url, "teacher-model", sleep=sleep or RecordingSleep(), seed=0, **kwargs)


def test_completion_returns_the_text_and_usage_the_server_sent():
    with FakeTeacherServer() as server:
        completion = make_client(server).complete(PROMPT, GenerationConfig())
    assert completion.text == echo_completion(QUERY)
    assert completion.completion_tokens == len(echo_completion(QUERY).split())
    assert completion.prompt_tokens == len(PROMPT.split())
    assert completion.attempts == 1


def test_requests_are_greedy_by_default_and_carry_the_stop_sequences():
    with FakeTeacherServer() as server:
        make_client(server).complete(PROMPT, GenerationConfig(stop=("\n\nQ:",)))
        [request] = server.log_snapshot()
    assert request["temperature"] == 0.0
    assert request["stop"] == ["\n\nQ:"]
    assert request["path"] == "/v1/completions"


def test_chat_mode_posts_the_prompt_as_a_user_message_to_chat_completions():
    with FakeTeacherServer() as server:
        completion = make_client(server, chat=True).complete(PROMPT, GenerationConfig())
        [request] = server.log_snapshot()
    assert request["path"] == "/v1/chat/completions"
    assert completion.text == echo_completion(QUERY)


@pytest.mark.parametrize("fault", [FAULT_HTTP_500, FAULT_TRUNCATED_JSON, FAULT_INVALID_JSON, FAULT_DROP_CONNECTION])
def test_a_transient_failure_is_retried_until_the_answer_arrives(fault):
    sleep = RecordingSleep()
    config = FakeServerConfig(fault_plan=faults_on_first_attempts(fault, fault))
    with FakeTeacherServer(config) as server:
        completion = make_client(server, sleep=sleep).complete(PROMPT, GenerationConfig())
        outcomes = [r["outcome"] for r in server.log_snapshot()]
    assert completion.text == echo_completion(QUERY)
    assert completion.attempts == 3
    assert outcomes == [fault, fault, "ok"]
    assert len(sleep.waits) == 2


def test_an_answer_slower_than_the_timeout_is_abandoned_and_retried():
    config = FakeServerConfig(fault_plan=faults_on_first_attempts(FAULT_SLOW), slow_s=1.5)
    with FakeTeacherServer(config) as server:
        completion = make_client(server, timeout_s=0.5).complete(PROMPT, GenerationConfig())
        outcomes = [r["outcome"] for r in server.log_snapshot()]
    assert completion.text == echo_completion(QUERY)
    assert outcomes[0] == FAULT_SLOW and outcomes[-1] == "ok"
    assert completion.attempts == len(outcomes) >= 2


def test_a_429_waits_as_long_as_retry_after_says():
    sleep = RecordingSleep()
    config = FakeServerConfig(fault_plan=faults_on_first_attempts(FAULT_HTTP_429), retry_after_header="7")
    with FakeTeacherServer(config) as server:
        make_client(server, sleep=sleep).complete(PROMPT, GenerationConfig())
    assert sleep.waits == [7.0]


def test_retry_after_is_capped_by_the_policy():
    sleep = RecordingSleep()
    config = FakeServerConfig(fault_plan=faults_on_first_attempts(FAULT_HTTP_429), retry_after_header="9999")
    policy = RetryPolicy(max_retries=2, backoff_base_s=0.01, retry_after_max_s=30.0)
    with FakeTeacherServer(config) as server:
        make_client(server, sleep=sleep, retry=policy).complete(PROMPT, GenerationConfig())
    assert sleep.waits == [30.0]


def test_retry_after_reads_delta_seconds_and_http_dates():
    now = datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=datetime.timezone.utc)
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after("Sat, 28 Nov 2026 08:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sat, 28 Nov 2026 07:59:00 GMT", now) == 0.0  # in the past: retry now
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4.0)
    rng = random.Random(0)
    for retry_index, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        waits = [policy.backoff_s(retry_index, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > 0.7 * ceiling  # spread over the whole range, not a constant


def test_the_client_gives_up_after_max_retries_with_a_clear_error():
    config = FakeServerConfig(fault_plan=lambda query, attempt: FAULT_HTTP_500)
    with FakeTeacherServer(config) as server:
        client = make_client(server, retry=RetryPolicy(max_retries=2, backoff_base_s=0.01))
        with pytest.raises(TeacherRequestError, match=r"failed after 3 attempts; last error: HTTP 500"):
            client.complete(PROMPT, GenerationConfig())
        assert len(server.log_snapshot()) == 3


def test_a_rejected_key_is_not_retried():
    config = FakeServerConfig(expected_api_key=SECRET_KEY)
    with FakeTeacherServer(config) as server:
        client = make_client(server, api_key=Secret("sk-wrong-key"))
        with pytest.raises(TeacherRequestError, match="HTTP 401"):
            client.complete(PROMPT, GenerationConfig())
        assert len(server.log_snapshot()) == 1


def test_the_api_key_is_sent_as_a_bearer_token():
    config = FakeServerConfig(expected_api_key=SECRET_KEY)
    with FakeTeacherServer(config) as server:
        completion = make_client(server, api_key=Secret(SECRET_KEY)).complete(PROMPT, GenerationConfig())
    assert completion.text == echo_completion(QUERY)


def test_the_api_key_never_appears_in_errors_reprs_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    config = FakeServerConfig(fault_plan=lambda query, attempt: FAULT_HTTP_500)
    with FakeTeacherServer(config) as server:
        client = make_client(server, api_key=Secret(SECRET_KEY), retry=RetryPolicy(max_retries=1, backoff_base_s=0.01))
        with pytest.raises(TeacherRequestError) as error:
            client.complete(PROMPT, GenerationConfig())
    assert SECRET_KEY not in str(error.value)
    assert SECRET_KEY not in repr(client) and SECRET_KEY not in repr(Secret(SECRET_KEY))
    assert caplog.records and SECRET_KEY not in caplog.text


def test_redact_removes_every_occurrence_of_the_key():
    assert redact(f"a {SECRET_KEY} b {SECRET_KEY}", Secret(SECRET_KEY)) == "a *** b ***"


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    assert resolve_api_key(str(key_file), {}).reveal() == "sk-from-file"
    assert resolve_api_key(None, {"DSS_TEACHER_API_KEY": "a", "OPENAI_API_KEY": "b"}).reveal() == "a"
    assert resolve_api_key(None, {"OPENAI_API_KEY": "b"}).reveal() == "b"
    assert resolve_api_key(None, {}) is None


def test_only_http_endpoints_are_accepted():
    with pytest.raises(ValueError, match="http"):
        TeacherClient("ftp://127.0.0.1/v1", "m")
