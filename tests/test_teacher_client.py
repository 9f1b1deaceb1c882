"""The teacher client against a misbehaving local OpenAI-compatible server (127.0.0.1 only)."""
import base64
import datetime
import json
import logging
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dss_jax.teacher.client import (
    GenerationConfig,
    RetryPolicy,
    Secret,
    TeacherClient,
    TeacherRequestError,
    _completion_from_body,
    _decode_json,
    _RetryableFailure,
    parse_retry_after,
    redact,
    resolve_api_key,
)
from teacher_server import (
    FAULT_DEEP_JSON,
    FAULT_DROP_CONNECTION,
    FAULT_ECHO_KEY_IN_ERROR,
    FAULT_ECHO_KEY_IN_TEXT,
    FAULT_HUGE_ANSWER,
    FAULT_HUGE_CHUNKED,
    FAULT_HUGE_HEADER,
    FAULT_HUGE_TOKEN_COUNT,
    FAULT_LONE_SURROGATE,
    FAULT_NAN_JSON,
    FAULT_NON_UTF8,
    FAULT_SLOW_CHUNKED,
    FAULT_TRICKLE_BODY,
    FAULT_TRICKLE_HEADERS,
    FAULT_WRONG_TYPES,
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


def always(fault):
    return lambda query, attempt: fault


@pytest.mark.parametrize("fault", [FAULT_TRICKLE_BODY, FAULT_SLOW_CHUNKED, FAULT_TRICKLE_HEADERS])
def test_an_answer_that_trickles_in_forever_ends_within_the_total_deadline(fault):
    # One byte every 0.05 s never trips a per-read timeout of 0.5 s; only a total deadline ends it.
    config = FakeServerConfig(fault_plan=always(fault), trickle_interval_s=0.05, trickle_max_s=15.0,
                              trickle_content_length=500_000)  # under the size cap: only the deadline can end it
    with FakeTeacherServer(config) as server:
        client = make_client(server, timeout_s=0.5, retry=RetryPolicy(max_retries=1, backoff_base_s=0.01))
        started = time.monotonic()
        with pytest.raises(TeacherRequestError, match=r"after 2 attempts; last error: no complete answer within "
                                                      r"the total deadline of 0.5s"):
            client.complete(PROMPT, GenerationConfig())
        elapsed = time.monotonic() - started
    assert elapsed < 2 * 0.5 + 1.5


@pytest.mark.parametrize("fault", [FAULT_HUGE_ANSWER, FAULT_HUGE_CHUNKED])
def test_an_answer_over_max_response_bytes_is_refused_at_once_and_not_retried(fault):
    config = FakeServerConfig(fault_plan=always(fault), huge_bytes=300_000)
    with FakeTeacherServer(config) as server:
        client = make_client(server, max_response_bytes=100_000)
        with pytest.raises(TeacherRequestError, match="larger than max_response_bytes=100000; refused, not stored"):
            client.complete(PROMPT, GenerationConfig())
        assert len(server.log_snapshot()) == 1


def test_a_huge_content_length_is_refused_before_reading_the_body():
    config = FakeServerConfig(fault_plan=always(FAULT_TRICKLE_BODY), trickle_interval_s=0.05, trickle_max_s=15.0)
    with FakeTeacherServer(config) as server:
        started = time.monotonic()
        with pytest.raises(TeacherRequestError, match="larger than max_response_bytes"):
            make_client(server, timeout_s=10.0).complete(PROMPT, GenerationConfig())
    assert time.monotonic() - started < 2.0


def test_an_answer_under_max_response_bytes_is_accepted_whole():
    config = FakeServerConfig(fault_plan=always(FAULT_HUGE_CHUNKED), huge_bytes=300_000)
    with FakeTeacherServer(config) as server:
        completion = make_client(server, max_response_bytes=400_000).complete(PROMPT, GenerationConfig())
    assert completion.text == "x" * 300_000


@pytest.mark.parametrize("fault", [
    FAULT_NON_UTF8, FAULT_WRONG_TYPES, FAULT_DEEP_JSON, FAULT_LONE_SURROGATE, FAULT_HUGE_TOKEN_COUNT,
    FAULT_NAN_JSON, FAULT_HUGE_HEADER,
])
def test_an_untrusted_malformed_answer_is_retried_never_raised_or_accepted(fault):
    config = FakeServerConfig(fault_plan=faults_on_first_attempts(fault))
    with FakeTeacherServer(config) as server:
        completion = make_client(server).complete(PROMPT, GenerationConfig())
    assert completion.text == echo_completion(QUERY)
    assert completion.attempts == 2


def key_forms(key):
    """The key as a hostile server might hand it back: plain, in a header dump, base64'd at any offset."""
    forms = {key, key.lower(), f"Bearer {key}"}
    for prefix in ("", "Bearer ", "Authorization: Bearer ", "x"):
        encoded = base64.b64encode((prefix + key).encode()).decode()
        forms.add(encoded[len(prefix) * 4 // 3 + 4 : -4])  # the part that encodes only the key
    return forms


def test_a_key_echoed_back_in_an_error_body_is_scrubbed_from_the_error_and_logs(caplog):
    caplog.set_level(logging.DEBUG)
    config = FakeServerConfig(fault_plan=always(FAULT_ECHO_KEY_IN_ERROR))
    with FakeTeacherServer(config) as server:
        client = make_client(server, api_key=Secret(SECRET_KEY))
        with pytest.raises(TeacherRequestError, match="HTTP 400") as error:
            client.complete(PROMPT, GenerationConfig())
    for form in key_forms(SECRET_KEY):
        assert form not in str(error.value) and form not in caplog.text


def test_a_key_echoed_back_in_the_completion_is_refused_not_returned():
    config = FakeServerConfig(fault_plan=always(FAULT_ECHO_KEY_IN_TEXT))
    with FakeTeacherServer(config) as server:
        client = make_client(server, api_key=Secret(SECRET_KEY))
        with pytest.raises(TeacherRequestError, match="the answer contains the API key") as error:
            client.complete(PROMPT, GenerationConfig())
        assert len(server.log_snapshot()) == 1
    assert SECRET_KEY not in str(error.value)


@pytest.mark.parametrize("prefix", ["", "a", "ab", "Authorization: Bearer "])
def test_redact_removes_the_key_base64_encoded_at_any_offset(prefix):
    secret = Secret(SECRET_KEY)
    text = "echo: " + base64.b64encode((prefix + SECRET_KEY + "!").encode()).decode()
    assert secret.appears_in(text)
    assert not Secret(SECRET_KEY).appears_in(redact(text, secret))


def test_redact_removes_the_key_in_other_case_url_escaped_hex_reversed_or_in_pieces():
    import urllib.parse

    secret = Secret(SECRET_KEY)
    for form in [SECRET_KEY.upper(), urllib.parse.quote(SECRET_KEY), SECRET_KEY.encode().hex(), SECRET_KEY[::-1],
                 SECRET_KEY[5:21]]:
        assert redact(f"<{form}>", secret) == "<***>"


def test_a_short_key_is_matched_only_exactly_so_ordinary_words_pass():
    secret = Secret("EMPTY")  # vLLM users often set OPENAI_API_KEY=EMPTY
    assert not secret.appears_in("There are 5 empty seats. So the answer is (a) empty.")
    assert secret.appears_in("the key was EMPTY")


def test_an_api_key_with_spaces_or_control_characters_is_refused_without_showing_it(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-has space\n")
    with pytest.raises(ValueError, match="printable ASCII") as error:
        resolve_api_key(str(key_file), {})
    assert "sk-has" not in str(error.value)
    with pytest.raises(ValueError, match=r"\$OPENAI_API_KEY"):
        resolve_api_key(None, {"OPENAI_API_KEY": "sk-\u00e9t\u00e9"})


def test_a_missing_api_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"--api_key_file .*nokey: cannot read it"):
        resolve_api_key(str(tmp_path / "nokey"), {})


def test_an_endpoint_with_credentials_in_it_is_refused_without_echoing_them():
    with pytest.raises(ValueError, match="without user:password@") as error:
        TeacherClient("http://user:sk-in-url@127.0.0.1:1/v1", "m")
    assert "sk-in-url" not in str(error.value)
    with pytest.raises(ValueError, match=r"\?query"):
        TeacherClient("http://127.0.0.1:1/v1?api_key=sk-in-url", "m")


@pytest.mark.parametrize("setting, value", [("timeout_s", 0), ("timeout_s", float("inf")), ("max_response_bytes", 0)])
def test_a_non_positive_timeout_or_size_cap_is_refused(setting, value):
    with pytest.raises(ValueError, match=setting):
        TeacherClient("http://127.0.0.1:1/v1", "m", **{setting: value})


def test_a_kept_alive_connection_is_reused_across_requests():
    with FakeTeacherServer() as server:
        client = make_client(server)
        for _ in range(3):
            client.complete(PROMPT, GenerationConfig())
        assert len({entry["client_port"] for entry in server.log_snapshot()}) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
answer_like = st.fixed_dictionaries({
    "choices": st.lists(st.fixed_dictionaries({}, optional={"text": json_values, "finish_reason": json_values,
                                                            "message": json_values}), max_size=2) | json_values,
}, optional={"usage": st.fixed_dictionaries({}, optional={"prompt_tokens": json_values,
                                                          "completion_tokens": json_values}) | json_values})


def _decoded_or_refused(content, chat):
    try:
        return _completion_from_body(_decode_json(content), chat, 1)
    except _RetryableFailure:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | answer_like.map(lambda body: json.dumps(body).encode()), st.booleans())
def test_fuzz_any_response_body_gives_a_well_typed_completion_or_a_retry(content, chat):
    completion = _decoded_or_refused(content, chat)
    if completion is not None:
        completion.text.encode("utf-8")  # valid Unicode, storable in sqlite and JSON
        assert completion.finish_reason is None or (isinstance(completion.finish_reason, str)
                                                    and len(completion.finish_reason) <= 64)
        for count in (completion.prompt_tokens, completion.completion_tokens):
            assert type(count) is int and 0 <= count < 2**31


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=24, max_size=64),
       st.binary(max_size=12), st.binary(max_size=12),
       st.sampled_from([base64.b64encode, base64.urlsafe_b64encode, base64.b32encode]))
def test_fuzz_the_key_base64_encoded_inside_any_text_is_found_and_scrubbed(key, before, after, encode):
    secret = Secret(key)
    echoed = "error: " + encode(before + key.encode() + after).decode()
    assert secret.appears_in(echoed)
    assert key not in redact(echoed, secret) and not secret.appears_in(redact(echoed, secret))


def test_redact_removes_a_key_broken_up_by_junk_bytes_from_an_error_body():
    secret = Secret(SECRET_KEY)  # 30 characters: pieces of 8+ are scrubbed
    broken = SECRET_KEY[:10] + "\ufffd" + SECRET_KEY[10:20] + "\ufffd" + SECRET_KEY[20:]
    scrubbed = redact(f"you sent {broken}", secret)
    assert all(SECRET_KEY[i : i + 8] not in scrubbed for i in range(len(SECRET_KEY) - 7))
