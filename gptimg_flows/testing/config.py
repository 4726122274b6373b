"""The emulator's knobs: keys, latency, URL lifetime, faults, limits and credit balances.

One pydantic model, so a test, the CLI and `POST /_emulator/config` all speak the same fields.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

ProviderName = Literal["openai", "scenario", "runware", "skillsvideo", "gptimage2ai"]
PROVIDERS: tuple[str, ...] = get_args(ProviderName)

#: Where each provider's API lives on the emulator (see docs/wire.md, "Base URLs").
PREFIXES: dict[str, str] = {
    "openai": "/openai/v1",
    "scenario": "/scenario/v1",
    "runware": "/runware/v1",
    "skillsvideo": "/skillsvideo/api",
    "gptimage2ai": "/gptimage2/api",
}

#: Credentials the emulator accepts unless configured otherwise. Scenario takes key + secret.
EMULATOR_KEYS: dict[str, str | tuple[str, str]] = {
    "openai": "sk-emu-openai",
    "scenario": ("emu-scenario-key", "emu-scenario-secret"),
    "runware": "emu-runware",
    "skillsvideo": "emu-skillsvideo",
    "gptimage2ai": "emu-gptimage2",
}

FaultKind = Literal[
    "submit_429",
    "poll_429",
    "submit_500",
    "submit_503",
    "submit_drop",
    "submit_lost_response",
    "poll_500",
    "poll_drop",
    "job_fail",
    "download_truncate",
    "download_not_image",
    "url_expired",
    "malformed_json",
    "html_error",
    "gateway_504",
    "misspell_text",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

#: What each unit of `credits` in the ledger means, per provider.
CREDIT_UNITS: dict[str, str] = {
    "openai": "usd",
    "scenario": "cu",
    "runware": "usd",
    "skillsvideo": "credits",
    "gptimage2ai": "credits",
}


class RateLimit(BaseModel):
    """A per-key token bucket of paid submits: `images_per_minute`, up to `burst` at once.

    A submit that finds too few tokens is answered 429 before any job exists (never paid),
    with an honest Retry-After (whole seconds, and `retry-after-ms` on the OpenAI routes); the
    OpenAI routes also send the x-ratelimit-*-requests headers on every answer unless
    `headers` is false."""

    model_config = ConfigDict(extra="forbid")

    images_per_minute: float = Field(gt=0)
    burst: int = Field(1, ge=1)
    headers: bool = True


class ForcedFault(BaseModel):
    """A fault that must happen next time its stage is reached (for deterministic tests)."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    provider: ProviderName | None = Field(None, description="None: the first provider to get there")
    count: int = Field(1, ge=1)


class Outage(BaseModel):
    """One provider down for a while, counted from when the config naming it was set: every
    submit (and, with scope "all", every poll) answers 503 with Retry-After, or 500. Nothing
    is created or charged while it lasts."""

    model_config = ConfigDict(extra="forbid")

    provider: ProviderName
    start: float = Field(0.0, ge=0, description="seconds after the config was set")
    end: float | None = Field(None, ge=0, description="seconds after; None: until reset")
    status: Literal[500, 503] = 503
    scope: Literal["submit", "all"] = "all"

    def active(self, elapsed: float) -> bool:
        return elapsed >= self.start and (self.end is None or elapsed < self.end)


def _check_rates(rates: dict[str, float]) -> dict[str, float]:
    for kind, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate for {kind} is {rate}; rates are 0..1")
    return rates


class EmulatorConfig(BaseModel):
    """Everything the emulator can be told. `POST /_emulator/config` merges top-level fields."""

    model_config = ConfigDict(extra="forbid")

    keys: dict[str, str | tuple[str, str]] = Field(
        default_factory=lambda: dict(EMULATOR_KEYS),
        description="accepted credentials; scenario takes (key, secret)",
    )
    latency: float = Field(0.5, ge=0, description="seconds from accept to done, every job")
    latency_by_provider: dict[str, float] = Field(default_factory=dict)
    submit_latency: float = Field(
        0.0, ge=0, description="seconds a successful submit takes to answer, its job created"
    )
    url_ttl: float | None = Field(
        300.0, ge=0, description="output URLs answer 403 this long after issue; None: never"
    )
    seed: int = Field(0, description="seeds the fault RNG and the pictures")
    faults: dict[FaultKind, float] = Field(default_factory=dict, description="kind → rate 0..1")
    faults_by_provider: dict[str, dict[FaultKind, float]] = Field(
        default_factory=dict, description="per-provider rates; override `faults` kind by kind"
    )
    force: list[ForcedFault] = Field(
        default_factory=list, description="faults consumed in order before any rate applies"
    )
    retry_after: float = Field(1.0, ge=0, description="Retry-After of every 429/503 we send")
    retry_after_header: str | None = Field(
        None,
        description="sent verbatim as the Retry-After of forced and concurrency 429s instead of "
        "`retry_after` (no retry-after-ms): junk like 'soon', an HTTP date, '1e9'",
    )
    max_concurrent_jobs: int | None = Field(
        None, ge=1, description="per provider; a submit beyond it answers 429"
    )
    balance: dict[str, float] = Field(
        default_factory=dict, description="credit limit per provider (net of refunds)"
    )
    rate_limits: dict[str, RateLimit] = Field(
        default_factory=dict, description="per provider: a token bucket of paid submits per key"
    )
    outages: list[Outage] = Field(
        default_factory=list,
        description="providers down on a schedule (seconds from when this config was set)",
    )
    pad_to_bytes: int | None = Field(
        None, ge=0, description="pad PNG outputs to about this size with an ancillary chunk"
    )
    scenario_spelling: Literal["sdk", "seed"] = Field(
        "sdk",
        description="sdk: queued/warming-up/in-progress/finalizing/success/failure; "
        "seed: queued/processing/success/failed",
    )
    runware_failure_http: Literal[200, 400] = Field(
        200, description="HTTP status of a Runware answer reporting a failed task"
    )
    render_mode: Literal["full", "stamp"] = Field(
        "full",
        description="full: draw every output from its prompt; stamp: draw once per size and "
        "format and make each output unique with a metadata chunk (cheap, for benchmarks)",
    )
    render_cache_mb: int = Field(256, ge=0)
    moderation_word: str = Field("FORBIDDEN", min_length=1)

    @field_validator("rate_limits")
    @classmethod
    def _limited_providers(cls, value: dict[str, RateLimit]) -> dict[str, RateLimit]:
        if "runware" in value:
            raise ValueError("runware documents no rate limit (its queues slow down instead)")
        return value

    @field_validator("keys", "latency_by_provider", "faults_by_provider", "balance", "rate_limits")
    @classmethod
    def _known_providers(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - set(PROVIDERS)
        if unknown:
            raise ValueError(f"unknown providers {sorted(unknown)}; known: {', '.join(PROVIDERS)}")
        return value

    @field_validator("faults")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_rates(value)

    @field_validator("faults_by_provider")
    @classmethod
    def _rates_by_provider(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for rates in value.values():
            _check_rates(rates)
        return value

    def latency_for(self, provider: str) -> float:
        return self.latency_by_provider.get(provider, self.latency)

    def rate(self, provider: str, kind: str) -> float:
        own = {str(k): v for k, v in self.faults_by_provider.get(provider, {}).items()}
        if kind in own:
            return own[kind]
        return {str(k): v for k, v in self.faults.items()}.get(kind, 0.0)

    def merged(self, partial: dict[str, object]) -> EmulatorConfig:
        """A new config with `partial`'s top-level fields replacing ours (validated)."""
        unknown = set(partial) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        data = self.model_dump(mode="json")
        data.update(partial)
        return type(self).model_validate(data)
