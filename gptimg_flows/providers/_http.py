"""The one HTTP helper every adapter uses, and what providers' answers mean: an API client
(auth headers, timeouts, the request gate, typed errors), error mapping, x-ratelimit figures,
job status spellings. No Prefect."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from gptimg_flows.errors import (
    AuthError,
    ContentRejected,
    InsufficientCredits,
    InvalidRequest,
    JobFailed,
    MalformedResponse,
    ProviderError,
    RateLimited,
    ServerError,
    TransportError,
)
from gptimg_flows.media.gate import CLIENT_LIMITS, gate_of
from gptimg_flows.media.headers import parse_retry_after
from gptimg_flows.models import (
    Job,
    JobState,
    JobStatus,
)

log = logging.getLogger("gptimg_flows.providers")


# -- status spelling ------------------------------------------------------------------------


def _norm(status: str) -> str:
    return re.sub(r"[\s_-]+", "-", status.strip().lower())


def map_status(raw: str, table: Mapping[str, JobState]) -> JobState:
    """Map a provider's status spelling; unknown spellings count as still running (logged)."""
    state = table.get(_norm(raw))
    if state is None:
        log.warning("unknown job status %r; treating it as still running", raw)
        return JobState.RUNNING
    return state


def status_table(**groups: Sequence[str]) -> dict[str, JobState]:
    """`status_table(queued=["queued", "pending"], ...)` → normalised lookup table."""
    return {_norm(s): JobState(state) for state, spellings in groups.items() for s in spellings}


# -- HTTP ---------------------------------------------------------------------------------------

_CREDIT_WORDS = ("insufficient", "credit", "balance", "quota_exceeded", "payment", "billing")
_MODERATION_WORDS = (
    "moderation",
    "content_policy",
    "content policy",
    "safety",
    "nsfw",
    "content_rejected",
    "contentrejected",
)


@dataclass(frozen=True)
class RateHeaders:
    """OpenAI's `x-ratelimit-*` figures on one answer (any may be missing): limits per minute,
    what is left, and seconds until the limit is whole again."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """`1s`, `6m0s`, `120ms`, `1h2m3.5s` (as OpenAI spells resets) in seconds; None if not."""
    if not value:
        return None
    text = value.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(a + u for a, u in parts) != text:
        try:
            return max(0.0, float(text))
        except ValueError:
            return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(amount) * scale[unit] for amount, unit in parts)


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    try:
        return int(float(headers[name])) if name in headers else None
    except ValueError:
        return None


def parse_rate_headers(headers: httpx.Headers) -> RateHeaders | None:
    """The x-ratelimit figures of an answer, or None when it carries none."""
    if not any(k.startswith("x-ratelimit-") for k in headers):
        return None
    return RateHeaders(
        limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
        reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


#: Who wants the rate-limit figures of the answers to the calls made in this context: the
#: task layer sets it around a paid submit (the adapters need not know), None elsewhere.
RATE_HEADERS_SINK: contextvars.ContextVar[Callable[[RateHeaders], None] | None] = (
    contextvars.ContextVar("gptimg_rate_headers_sink", default=None)
)


def error_details(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, code, parameter) from any of the providers' error shapes, or a short body."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        text = re.sub(r"<[^>]+>", " ", response.text)
        text = " ".join(text.split())[:200]
        return (text or response.reason_phrase or "no body"), None, None
    candidates: list[Any] = [body]
    if isinstance(body, dict):
        for k in ("error", "errors", "detail"):
            v = body.get(k)
            if isinstance(v, list) and v:
                v = v[0]
            if v is not None:
                candidates.insert(0, v)
    for c in candidates:
        if isinstance(c, str):
            return c[:500], None, None
        if isinstance(c, dict):
            message = c.get("message") or c.get("error") or c.get("detail") or c.get("msg")
            code = c.get("code") or c.get("type")
            param = c.get("parameter") or c.get("param")
            if message or code:
                return (
                    str(message or code)[:500],
                    str(code) if code else None,
                    str(param) if param else None,
                )
    return json.dumps(body)[:200], None, None


def error_for_response(provider: str, response: httpx.Response) -> ProviderError:
    """Map an HTTP error answer to the typed error that decides what happens next."""
    status = response.status_code
    message, code, param = error_details(response)
    text = f"{message} {code or ''}".lower()
    kw: dict[str, Any] = {"provider": provider, "status_code": status}
    if status == 429 and "insufficient_quota" in text:  # OpenAI's spelling of "no credits"
        return InsufficientCredits(f"out of credits: {message}", **kw)
    if status == 429:
        return RateLimited(
            f"rate limited: {message}", retry_after=parse_retry_after(response.headers), **kw
        )
    if status in (401, 403):
        return AuthError(f"credentials refused: {message}", **kw)
    if status == 402 or (status < 500 and any(w in text for w in _CREDIT_WORDS)):
        return InsufficientCredits(f"out of credits: {message}", **kw)
    if status < 500 and any(w in text for w in _MODERATION_WORDS):
        return ContentRejected(f"rejected by moderation: {message}", **kw)
    if status >= 500:
        return ServerError(f"server error: {message}", **kw)
    if status in (400, 404, 409, 413, 415, 422):
        return InvalidRequest(f"request refused: {message}", field=param, **kw)
    return ProviderError(f"unexpected answer: {message}", **kw)


def failure_error(provider: str, job: Job, status: JobStatus) -> ProviderError:
    """The error for a job the provider reports failed: moderation is told apart."""
    text = f"{status.error or ''} {status.error_code or ''}".lower()
    message = status.error or status.error_code or status.raw_status or "no reason given"
    if any(w in text for w in _MODERATION_WORDS) or "moderat" in text:
        return ContentRejected(
            f"rejected by moderation: {message}", provider=provider, job_id=job.job_id
        )
    verb = "was canceled" if status.state is JobState.CANCELED else "failed"
    return JobFailed(f"job {verb}: {message}", provider=provider, job_id=job.job_id)


class ApiClient:
    """httpx.AsyncClient wrapper: auth headers, timeouts, and typed errors for one provider.

    Credentials live only in the client's default headers, never in messages or reprs.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._secrets = secrets_of(headers)
        # Which account this client speaks for, without holding its secret: a rate limit is
        # the account's, shared by every client and flow run that uses the same key.
        auth = sorted((k.lower(), v) for k, v in headers.items())
        self.account = hashlib.sha256(
            repr((provider, base_url.rstrip("/"), auth)).encode()
        ).hexdigest()[:24]
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=dict(headers),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=CLIENT_LIMITS,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        ok: tuple[int, ...] = (200, 201, 202),
        job_id: str | None = None,
    ) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON) or raise a typed error, whose
        message never holds this client's credentials (a provider may echo them back)."""
        try:
            return await self._request(method, path, json_body, data, files, ok, job_id)
        except ProviderError as err:
            raise self.redacted(err) from None

    def redacted(self, err: ProviderError) -> ProviderError:
        """`err` with every credential this client sends, and anything shaped like an API key
        (as OpenAI echoes one masked), removed: the one place every adapter's errors pass."""
        message = _KEY_PATTERN.sub("[redacted key]", err.message)
        for secret in self._secrets:
            message = message.replace(secret, "[redacted]")
        if message != err.message:
            err.message = message
            err.args = (err._render(),)
        return err

    async def _request(
        self,
        method: str,
        path: str,
        json_body: Any,
        data: Mapping[str, Any] | None,
        files: Any,
        ok: tuple[int, ...],
        job_id: str | None,
    ) -> tuple[int, Any]:
        url = path if path.startswith("http") or not path else "/" + path.lstrip("/")
        try:
            async with gate_of(self._client).slot():
                response = await self._client.request(
                    method, url, json=json_body, data=data, files=files
                )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransportError(
                f"could not reach {self.provider}: {type(exc).__name__}",
                request_sent=False,
                provider=self.provider,
                job_id=job_id,
            ) from None
        except httpx.TransportError as exc:
            raise TransportError(
                f"connection to {self.provider} failed mid-request: {type(exc).__name__}",
                request_sent=True,
                provider=self.provider,
                job_id=job_id,
            ) from None
        sink = RATE_HEADERS_SINK.get()
        if sink is not None and (figures := parse_rate_headers(response.headers)) is not None:
            sink(figures)
        if response.status_code not in ok:
            err = error_for_response(self.provider, response)
            err.job_id = job_id
            err.args = (err._render(),)
            raise err
        try:
            return response.status_code, response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            snippet = " ".join(re.sub(r"<[^>]+>", " ", response.text).split())[:120]
            raise MalformedResponse(
                f"answer is not JSON ({response.headers.get('content-type', '?')}): {snippet!r}",
                provider=self.provider,
                status_code=response.status_code,
                job_id=job_id,
            ) from None

    async def stream_lines(self, path: str, *, job_id: str | None = None) -> AsyncIterator[str]:
        """A text answer one line at a time (a large file, never held whole in memory)."""
        try:
            async with (
                gate_of(self._client).slot(),
                self._client.stream("GET", "/" + path.lstrip("/")) as response,
            ):
                if response.status_code != 200:
                    await response.aread()
                    err = error_for_response(self.provider, response)
                    err.job_id = job_id
                    err.args = (err._render(),)
                    raise self.redacted(err)
                async for line in response.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise TransportError(
                f"reading from {self.provider} failed: {type(exc).__name__}",
                provider=self.provider,
                job_id=job_id,
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()


#: An API key as OpenAI writes one, whole or masked (`sk-proj-****abcd`).
_KEY_PATTERN = re.compile(r"\b(sk|sess)-[A-Za-z0-9_*\-]{4,}")
#: Headers that carry credentials (the others, like Accept, are not secret).
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-key"})


def secrets_of(headers: Mapping[str, str]) -> list[str]:
    """The credentials in a client's headers, as a provider could echo them: each value, a
    bearer token alone, and a basic-auth pair decoded (key and secret each), longest first."""
    found: set[str] = set()
    for name, value in headers.items():
        if name.lower() not in CREDENTIAL_HEADERS:
            continue
        found.add(value)
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token:
            found.add(token)
        elif scheme.lower() == "basic" and token:
            found.add(token)
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                found.update(base64.b64decode(token).decode().split(":", 1))
    return sorted((s for s in found if s), key=len, reverse=True)


def require(body: Any, *path: str | int, provider: str, job_id: str | None = None) -> Any:
    """Dig `path` out of a JSON answer, or raise MalformedResponse saying what was missing."""
    cur = body
    for key in path:
        try:
            cur = cur[key]
        except (KeyError, IndexError, TypeError):
            where = ".".join(str(p) for p in path)
            raise MalformedResponse(
                f"answer has no `{where}`", provider=provider, job_id=job_id
            ) from None
    return cur


def bearer_api(
    provider: str,
    who: str,
    env: str,
    api_key: str,
    base_url: str,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> ApiClient:
    """The `Authorization: Bearer KEY` client most providers take; a missing key is refused
    at once, naming the variable users usually hold it in."""
    if not api_key or not api_key.strip():
        raise AuthError(f"no {who} API key: set {env} or pass api_key", provider=provider)
    return ApiClient(
        provider,
        base_url,
        {"Authorization": f"Bearer {api_key.strip()}"},
        default_timeout(timeout),
        transport,
    )


#: How long a request may wait for one of the client's connections (nothing sent yet).
POOL_WAIT_SECONDS = 300.0


def default_timeout(read: float) -> httpx.Timeout:
    """Waiting for a free connection sends nothing and costs nothing, so it may be long: with
    hundreds of jobs in flight on a busy event loop, 30 s of pool wait turned into failed
    submits and polls (PoolTimeout) although the provider was fine."""
    return httpx.Timeout(connect=10.0, read=read, write=60.0, pool=POOL_WAIT_SECONDS)
