"""The emulator's memory: jobs, output files, assets, config, faults and the ledger.

A job's progress is a function of the clock (accepted at t0, done at t0 + latency), so no
background task drives it and a poll costs a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from starlette.requests import Request
from starlette.responses import Response

from gptimg_flows.models import canonical_json
from gptimg_flows.testing import shapes
from gptimg_flows.testing.config import PROVIDERS, EmulatorConfig, ForcedFault
from gptimg_flows.testing.faults import DroppedConnection, FaultPicker, html_error_response
from gptimg_flows.testing.images import InputStore, OutputSpec, Renderer
from gptimg_flows.testing.ledger import Ledger
from gptimg_flows.testing.misspell import misspell_quotes

State = Literal["queued", "running", "succeeded", "failed", "canceled"]

#: Charge per image, per provider, in the provider's unit (OpenAI bills the tokens its
#: answer reports: routes_openai.usage_for at gpt-image-2's token prices).
PRICE_PER_IMAGE = {"scenario": 5.0, "runware": 0.04, "skillsvideo": 20.0, "gptimage2ai": 10.0}
#: Balance reported where no limit is configured.
UNLIMITED = 1_000_000.0


@dataclass
class Job:
    """One accepted generation. `fail` is decided at accept time: (code, message)."""

    provider: str
    job_id: str
    created: float
    latency: float
    outputs: list[OutputSpec]
    charge: float = 0.0
    fail: tuple[str, str] | None = None
    refund_on_fail: bool = False
    key: str | None = None
    canceled_at: float | None = None
    settled: bool = False
    urls: list[str] | None = None
    asset_ids: list[str] = field(default_factory=list)
    image_uuids: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.outputs)

    @property
    def done_at(self) -> float:
        return self.created + self.latency

    def progress(self, now: float) -> float:
        if self.latency <= 0:
            return 1.0
        return max(0.0, min(1.0, (now - self.created) / self.latency))

    def state(self, now: float) -> State:
        if self.canceled_at is not None and self.canceled_at < self.done_at:
            return "canceled"
        if now < self.done_at:
            return "queued" if self.progress(now) < 0.25 else "running"
        return "failed" if self.fail else "succeeded"

    def running(self, now: float) -> bool:
        return self.state(now) in ("queued", "running")


@dataclass
class FileEntry:
    """What `/files/<token>.<ext>` serves: an output (by spec) or a stored input."""

    provider: str
    job_id: str | None
    mime: str
    expires_at: float | None  # monotonic; None: never
    spec: OutputSpec | None = None
    input_sha: str | None = None
    born_expired: bool = False


@dataclass
class Asset:
    """A Scenario asset: an uploaded input or one output of a job."""

    asset_id: str
    input_sha: str | None = None
    job_id: str | None = None
    index: int = 0


def body_digest(body: Any) -> str:
    """sha256 of the canonical request (volatile ids already removed by the caller)."""
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class Emulator:
    """All state behind one app; handlers reach it as `request.app.state.emulator`."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.initial = config
        self.config = config
        self.ledger = Ledger()
        self.faults = FaultPicker(config)
        self.inputs = InputStore()
        self.renderer = Renderer(self.inputs, config.render_cache_mb * 1024 * 1024)
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, FileEntry] = {}
        self.assets: dict[str, Asset] = {}
        self.images: dict[str, OutputSpec] = {}  # Runware imageUUID → output
        self._active: dict[str, list[Job]] = {p: [] for p in PROVIDERS}
        self._refundable: list[Job] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._http: httpx.AsyncClient | None = None
        self.batch_store: Any = None  # routes_openai_batch keeps files and batches here
        self.buckets: dict[str, TokenBucket] = {}  # rate_limits: one per provider and key
        self.outages_from = time.monotonic()  # outages are scheduled from the config's time

    # -- control --------------------------------------------------------------------------

    def reset(self, reset_config: bool = False) -> None:
        if reset_config:
            self.config = self.initial
        self.ledger.clear()
        self.faults = FaultPicker(self.config)
        self.inputs.clear()
        self.renderer = Renderer(self.inputs, self.config.render_cache_mb * 1024 * 1024)
        self.jobs.clear()
        self.files.clear()
        self.assets.clear()
        self.images.clear()
        self._active = {p: [] for p in PROVIDERS}
        self._refundable.clear()
        self.batch_store = None
        self.buckets.clear()
        self.outages_from = time.monotonic()

    def configure(self, partial: Mapping[str, Any]) -> EmulatorConfig:
        self.config = self.config.merged(dict(partial))
        if "outages" in partial:
            self.outages_from = time.monotonic()
        if "seed" in partial:
            self.faults.rng.seed(self.config.seed)
        if "force" in partial:
            self.faults.set_queue(self.config.force)
        if "render_cache_mb" in partial:
            self.renderer.cache_bytes = self.config.render_cache_mb * 1024 * 1024
        return self.config

    def config_view(self) -> dict[str, Any]:
        """The config, with `force` showing what is left of the forced-fault queue."""
        data = self.config.model_dump(mode="json")
        data["force"] = [dict(f) for f in self.faults.queue]
        return data

    def push_fault(self, forced: ForcedFault) -> None:
        self.faults.push(forced)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        """For fetching input image URLs (which may point back at this emulator)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30.0, follow_redirects=True)
        return self._http

    def authorized(self, provider: str, request: Request) -> bool:
        return shapes.authorized(provider, request, dict(self.config.keys))

    # -- faults ---------------------------------------------------------------------------

    def fault(self, provider: str, stage: str, path: str) -> str | None:
        kind = self.faults.pick(self.config, provider, stage)
        if kind is not None:
            self.ledger.fault(kind, provider, path)
        return kind

    def submit_fault(self, provider: str, path: str) -> Response | None:
        """A fault that stops a submit before any job exists (so nothing is charged)."""
        if down := self.outage(provider, "submit", path):
            return down
        kind = self.fault(provider, "submit", path)
        retry = self.config.retry_after
        if kind == "submit_429":
            return self.rate_limited(provider)
        if kind == "submit_500":
            return shapes.server_error(provider, 500)
        if kind == "submit_503":
            return shapes.server_error(provider, 503, retry_after=retry)
        if kind == "submit_drop":
            return DroppedConnection()
        if kind == "html_error":
            return html_error_response()
        return None

    def outage(self, provider: str, stage: str, path: str) -> Response | None:
        """The answer of a provider that is down now (config `outages`), if it is."""
        elapsed = time.monotonic() - self.outages_from
        for outage in self.config.outages:
            if outage.provider != provider or not outage.active(elapsed):
                continue
            if stage != "submit" and outage.scope == "submit":
                continue
            self.ledger.fault(f"outage_{outage.status}", provider, path)
            retry = self.config.retry_after if outage.status == 503 else None
            return shapes.server_error(provider, outage.status, retry_after=retry)
        return None

    def rate_limited(self, provider: str, message: str | None = None) -> Response:
        """A 429 with the configured Retry-After: `retry_after_header` verbatim when set."""
        raw = self.config.retry_after_header
        headers = None if raw is None else {"retry-after": raw}
        return shapes.rate_limited(provider, self.config.retry_after, message, headers)

    def poll_fault(self, provider: str, path: str) -> Response | None:
        if down := self.outage(provider, "poll", path):
            return down
        kind = self.fault(provider, "poll", path)
        if kind == "poll_429":
            return self.rate_limited(provider)
        if kind == "poll_500":
            return shapes.server_error(provider, 500)
        if kind == "poll_drop":
            return DroppedConnection()
        return None

    def job_failure(
        self, provider: str, path: str, code: str = "generation_failed"
    ) -> tuple[str, str] | None:
        """(code, message) when the `job_fail` fault says this job will end failed."""
        if self.fault(provider, "job", path):
            return (code, "The image generation failed upstream.")
        return None

    def drawn(self, provider: str, prompt: str, path: str) -> str:
        """The prompt one output is drawn from: its quoted text misspelt when the
        `misspell_text` fault says the model got the words wrong."""
        if self.fault(provider, "text", path):
            return misspell_quotes(prompt, self.faults.rng)
        return prompt

    def moderated(self, *texts: str | None) -> bool:
        """The stand-in for moderation: the configured word appears in a prompt field."""
        pattern = re.compile(rf"\b{re.escape(self.config.moderation_word)}\b")
        return any(pattern.search(t) for t in texts if t)

    # -- jobs and credits -----------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def running_count(self, provider: str) -> int:
        now = self.now()
        active = [j for j in self._active[provider] if j.running(now)]
        self._active[provider] = active
        return len(active)

    def remaining(self, provider: str) -> float | None:
        """Credits left under the configured balance, or None when there is no limit."""
        self.settle()
        limit = self.config.balance.get(provider)
        if limit is None:
            return None
        return float(limit) - self.ledger.credits_of(provider)

    def balance_view(self, provider: str) -> float:
        left = self.remaining(provider)
        return UNLIMITED - self.ledger.credits_of(provider) if left is None else left

    def rate_check(
        self, provider: str, request: Request, n: int
    ) -> tuple[Response | None, dict[str, str]]:
        """The account's token bucket of paid submits (`rate_limits`): a 429 with an honest
        Retry-After when too few tokens are left, before any job exists; and the
        x-ratelimit-*-requests headers the OpenAI routes send on every answer."""
        limit = self.config.rate_limits.get(provider)
        if limit is None:
            return None, {}
        account = provider + "\x00" + request.headers.get("authorization", "")
        bucket = self.buckets.get(account)
        if bucket is None:
            bucket = self.buckets[account] = TokenBucket(limit.images_per_minute, limit.burst)
        ok, wait = bucket.take(n, self.now())
        headers: dict[str, str] = {}
        if provider == "openai" and limit.headers:
            headers = {
                "x-ratelimit-limit-requests": f"{limit.images_per_minute:g}",
                "x-ratelimit-remaining-requests": str(max(0, math.floor(bucket.tokens))),
                "x-ratelimit-reset-requests": go_duration(bucket.until_full()),
            }
        if ok:
            return None, headers
        self.ledger.rate_limited(provider)
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        if provider == "openai":
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return shapes.rate_limited(provider, wait, headers=headers), headers

    def precheck(self, provider: str, cost: float) -> Response | None:
        """The concurrency limit (429) and the balance (out of credits) before a job starts."""
        limit = self.config.max_concurrent_jobs
        if limit is not None and self.running_count(provider) >= limit:
            return self.rate_limited(provider, "Too many concurrent jobs; retry later.")
        left = self.remaining(provider)
        if left is not None and cost > left + 1e-9:
            return shapes.out_of_credits(provider)
        return None

    def accept(
        self,
        provider: str,
        outputs: list[OutputSpec],
        *,
        path: str,
        body_sha256: str,
        charge: float,
        charge_now: bool = True,
        fail: tuple[str, str] | None = None,
        refund_on_fail: bool = False,
        job_id: str | None = None,
        key: str | None = None,
        task_uuid: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Job:
        """Create a job: it runs from now for the provider's latency. Charged unless told not."""
        job = Job(
            provider=provider,
            job_id=job_id or new_id("job_"),
            created=self.now(),
            latency=self.config.latency_for(provider),
            outputs=outputs,
            charge=charge,
            fail=fail,
            refund_on_fail=refund_on_fail,
            key=key,
            extra=extra or {},
        )
        self.jobs[job.job_id] = job
        self._active[provider].append(job)
        running = self.running_count(provider)
        running_all = sum(self.running_count(p) for p in PROVIDERS)
        self.ledger.running(provider, running, running_all)
        self.ledger.submission(
            provider,
            job.job_id,
            job.n,
            body_sha256,
            key=key,
            task_uuid=task_uuid,
            path=path,
            prompt=outputs[0].prompt if outputs else None,
        )
        if charge_now and charge:
            self.ledger.charge(provider, job.job_id, charge)
        if fail and refund_on_fail and charge_now and charge:
            self._refundable.append(job)
        if fail is None:
            self.prewarm(job)
        return job

    def settle(self) -> None:
        """Refund failed jobs that have now ended (the clock, not a task, moves jobs on)."""
        if not self._refundable:
            return
        now = self.now()
        keep = []
        for job in self._refundable:
            if job.state(now) == "failed":
                reason = job.fail[0] if job.fail else "failed"
                self.ledger.refund(job.provider, job.job_id, job.charge, reason)
            elif job.state(now) != "canceled":
                keep.append(job)
        self._refundable = keep

    def prewarm(self, job: Job) -> None:
        """Start drawing outputs while the job 'runs', so downloads need not wait for it."""
        for spec in job.outputs:
            task = asyncio.ensure_future(self.renderer.get(spec, self.config.render_mode))
            self._background.add(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # a failed prewarm surfaces again when the file is fetched

    def running_view(self) -> dict[str, int]:
        counts = {p: self.running_count(p) for p in PROVIDERS}
        counts["all"] = sum(counts.values())
        return counts

    def ledger_view(self) -> dict[str, Any]:
        self.settle()
        return self.ledger.snapshot(self.running_view())

    # -- files ----------------------------------------------------------------------------

    def issue_url(
        self,
        root: str,
        provider: str,
        *,
        issued_at: float,
        path: str,
        spec: OutputSpec | None = None,
        job_id: str | None = None,
        input_sha: str | None = None,
        mime: str = "image/png",
        ext: str = "png",
    ) -> str:
        """A new temporary URL (`url_ttl` from `issued_at`), maybe born expired (fault)."""
        expired = spec is not None and self.fault(provider, "url", path) == "url_expired"
        ttl = self.config.url_ttl
        token = secrets.token_urlsafe(18)
        self.files[token] = FileEntry(
            provider=provider,
            job_id=job_id,
            mime=spec.mime if spec else mime,
            expires_at=issued_at if expired else (None if ttl is None else issued_at + ttl),
            spec=spec,
            input_sha=input_sha,
            born_expired=expired,
        )
        return f"{root}/files/{token}.{spec.ext if spec else ext}"

    def job_urls(self, root: str, job: Job, path: str) -> list[str]:
        """Output URLs of a finished job, issued once (their life starts when the job ended)."""
        if job.urls is None:
            job.urls = [
                self.issue_url(
                    root,
                    job.provider,
                    issued_at=job.done_at,
                    path=path,
                    spec=spec,
                    job_id=job.job_id,
                )
                for spec in job.outputs
            ]
        return job.urls


class TokenBucket:
    """`per_minute` tokens a minute, at most `burst` held; starts full."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at: float | None = None

    def _refill(self, now: float) -> None:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, n: int, now: float) -> tuple[bool, float]:
        """(taken, seconds until it could be): `n` over the burst goes once the bucket is full."""
        self._refill(now)
        need = min(float(n), self.burst)
        if self.tokens + 1e-9 >= need:
            self.tokens -= n
            return True, 0.0
        return False, (need - self.tokens) / self.rate

    def until_full(self) -> float:
        return max(0.0, (self.burst - self.tokens) / self.rate)


def go_duration(seconds: float) -> str:
    """Seconds as OpenAI spells a reset: `120ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


def emulator_of(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emulator
    return emu


def root_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


Handler = Callable[[Request, Emulator], Awaitable[Response]]


def endpoint(provider: str, kind: str | None) -> Callable[[Handler], Callable[[Request], Any]]:
    """Count the request, run it, and count a rejection if it answered 4xx/5xx."""

    def wrap(fn: Handler) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            emu = emulator_of(request)
            if kind is not None:
                emu.ledger.request(provider, kind)
            response = await fn(request, emu)
            if kind == "submit" and response.status_code < 300 and emu.config.submit_latency:
                await asyncio.sleep(emu.config.submit_latency)  # the job exists, charged
            if response.status_code >= 400 and not isinstance(response, DroppedConnection):
                emu.ledger.rejected(provider, response.status_code)
            return response

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return wrap


def output_seed(config: EmulatorConfig, job_id: str, index: int) -> int:
    """Every output of every job gets its own picture; the same seed config repeats them."""
    digest = hashlib.sha256(f"{config.seed}:{job_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


async def json_body(request: Request) -> Any:
    """The parsed JSON body, or a `ValueError` naming the problem."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("request body is not valid JSON") from None


def idempotency_key(request: Request) -> str | None:
    """The client's idempotency key header, if it sent one (recorded in the ledger)."""
    return request.headers.get("idempotency-key") or request.headers.get("x-idempotency-key")
