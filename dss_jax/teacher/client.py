"""HTTP client for OpenAI-compatible teacher LLM endpoints (vLLM, TGI, llama.cpp, hosted APIs).

Speaks `/v1/completions` (a raw few-shot prompt) and `/v1/chat/completions` (the prompt as
one user message). Every request is retried with exponential backoff and full jitter on
429 (honouring `Retry-After`, in seconds or as an HTTP date), 5xx, timeouts, dropped
connections and truncated or malformed JSON bodies, up to a maximum number of retries;
after that a `TeacherRequestError` names the URL, the attempts and the last failure.

The API key is held in a `Secret` whose repr is `***`, and every error message is passed
through `redact` before it leaves this module, so the key never reaches logs, exception
texts or output files.
"""
from __future__ import annotations

import dataclasses
import datetime
import email.utils
import json
import logging
import os
import random
import threading
import time
from typing import Callable, Mapping, Optional

import requests

LOGGER = logging.getLogger(__name__)

API_KEY_ENV_VARS = ("DSS_TEACHER_API_KEY", "OPENAI_API_KEY")
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


class TeacherRequestError(RuntimeError):
    """A request that failed for good: retries exhausted, or a non-retryable HTTP status."""


class Secret:
    """A string that never shows itself in repr/str (for API keys)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def redact(text: str, secret: Optional[Secret]) -> str:
    """Replace every occurrence of the secret's value in `text` by `***`."""
    if secret is None or not secret.reveal():
        return text
    return text.replace(secret.reveal(), "***")


def resolve_api_key(
    api_key_file: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> Optional[Secret]:
    """The API key from a file (first line) or from DSS_TEACHER_API_KEY / OPENAI_API_KEY.

    Returns None when none is set (local servers such as vLLM usually need no key).
    """
    if api_key_file:
        with open(api_key_file, encoding="utf-8") as f:
            value = f.readline().strip()
        if not value:
            raise ValueError(f"API key file {api_key_file} is empty")
        return Secret(value)
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV_VARS:
        value = environ.get(name, "").strip()
        if value:
            return Secret(value)
    return None


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings sent with every request (greedy by default)."""

    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")
        if len(self.stop) > 4:
            # The OpenAI API accepts at most 4 stop sequences.
            raise ValueError(f"at most 4 stop sequences are allowed, got {len(self.stop)}")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried (exponential backoff with full jitter)."""

    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 300.0

    def backoff_s(self, retry_index: int, rng: random.Random) -> float:
        """Full-jitter backoff before retry number `retry_index` (0-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2.0**retry_index))
        return rng.uniform(0.0, ceiling)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One finished teacher completion with its token usage."""

    text: str
    finish_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    attempts: int


def parse_retry_after(value: Optional[str], now: Optional[datetime.datetime] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class _RetryableFailure(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, reason: str, retry_after_s: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def _completion_from_body(body: object, chat: bool, attempts: int) -> Completion:
    """Extract text and usage from a decoded response body, or raise _RetryableFailure."""
    if not isinstance(body, dict):
        raise _RetryableFailure("response body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _RetryableFailure("response has no choices")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise _RetryableFailure("response choice has no text")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        attempts=attempts,
    )


class TeacherClient:
    """Thread-safe client for one model behind an OpenAI-compatible base URL (e.g. `http://host:8000/v1`)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: Optional[Secret] = None,
        chat: bool = False,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        seed: Optional[int] = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {base_url!r}")
        if not model:
            raise ValueError("a model name is required")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.chat = chat
        self.timeout_s = timeout_s
        self.retry = retry
        self._api_key = api_key
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"TeacherClient(base_url={self.base_url!r}, model={self.model!r}, chat={self.chat})"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions" if self.chat else f"{self.base_url}/completions"

    def request_payload(self, prompt: str, generation: GenerationConfig) -> dict:
        """The JSON body sent for `prompt` (also what the cache key is derived from)."""
        payload: dict = {
            "model": self.model,
            "max_tokens": generation.max_tokens,
            "temperature": generation.temperature,
        }
        if generation.stop:
            payload["stop"] = list(generation.stop)
        if self.chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        return payload

    def complete(self, prompt: str, generation: GenerationConfig) -> Completion:
        """Send one prompt, retrying transient failures; raise TeacherRequestError when it cannot succeed."""
        payload = self.request_payload(prompt, generation)
        last_reason = "no attempt made"
        attempts = self.retry.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(payload, attempt + 1)
            except _RetryableFailure as failure:
                last_reason = redact(failure.reason, self._api_key)
                if attempt + 1 >= attempts:
                    break
                wait_s = self._wait_before_retry(attempt, failure.retry_after_s)
                LOGGER.warning(
                    "teacher request failed (%s); retry %d/%d in %.2fs",
                    last_reason, attempt + 1, self.retry.max_retries, wait_s,
                )
                self._sleep(wait_s)
        raise TeacherRequestError(
            redact(f"POST {self.url} failed after {attempts} attempts; last error: {last_reason}", self._api_key)
        )

    def _wait_before_retry(self, retry_index: int, retry_after_s: Optional[float]) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.retry.retry_after_max_s)
        with self._rng_lock:
            return self.retry.backoff_s(retry_index, self._rng)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Content-Type"] = "application/json"
            if self._api_key is not None:
                session.headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
            self._local.session = session
        return session

    def _attempt(self, payload: dict, attempt_number: int) -> Completion:
        try:
            response = self._session().post(
                self.url, data=json.dumps(payload), timeout=self.timeout_s
            )
            status = response.status_code
            content = response.content  # reads the whole body; truncation raises here
        except requests.Timeout as e:
            raise _RetryableFailure(f"timeout after {self.timeout_s}s ({type(e).__name__})") from None
        except (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as e:
            raise _RetryableFailure(f"connection failed: {type(e).__name__}: {e}") from None
        if status == 429 or status in RETRYABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _RetryableFailure(f"HTTP {status}", retry_after)
        if status >= 400:
            detail = content[:300].decode("utf-8", errors="replace")
            raise TeacherRequestError(
                redact(f"POST {self.url} returned HTTP {status} (not retried): {detail}", self._api_key)
            )
        try:
            body = json.loads(content)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: a truncated or garbled body
            raise _RetryableFailure(f"invalid JSON in response ({type(e).__name__})") from None
        return _completion_from_body(body, self.chat, attempt_number)

