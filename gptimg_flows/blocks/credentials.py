"""Prefect blocks: one credentials block per provider, and the image archive.

Secrets are `SecretStr`: the Prefect UI, flow-run parameters and logs show them masked. A block
hands out a provider adapter (`get_provider`); nothing else ever reads the secret.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from abc import ABC
from typing import Any, ClassVar

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from gptimg_flows.archive.store import LINK_EXPIRY_SECONDS, Archive, default_basepath
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.headers import RETRY_AFTER_CAP
from gptimg_flows.providers.base import Provider
from gptimg_flows.providers.offline import OFFLINE_NAMES, LenientOfflineProvider, OfflineProvider
from gptimg_flows.spend.prices import TokenPrices

_DOCS = "https://github.com/gptimg-flows/gptimg-flows#providers"


#: How long one request waits for its account's rate limit unless a block says: a 1,000-row
#: file on OpenAI's tier 1 (5 images a minute) takes 200 minutes.
RATE_LIMIT_WAIT_SECONDS = 4 * 3600.0


class ProviderCredentials(CredentialsBlock, ABC):
    """Fields every provider block shares; `get_provider()` builds the adapter."""

    provider_name: ClassVar[str]

    base_url: str | None = Field(
        default=None,
        description="Override the API base URL (a proxy or a test server). Empty = the provider's.",
    )
    timeout_seconds: float = Field(
        default=120.0, gt=0, description="Read timeout for one API call, in seconds."
    )
    concurrency_limit: str | None = Field(
        default=None,
        description=(
            "Name of a Prefect global concurrency limit capping this provider's running jobs "
            "across every worker (create it with `prefect gcl create NAME --limit K`)."
        ),
    )
    retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description=(
            "How many times a transient error (429, 5xx, a dropped connection) is retried, as "
            "Prefect task retries shown in the UI. A paid job is never submitted twice."
        ),
    )
    rate_limit: str | None = Field(
        default=None,
        description=(
            "Name of a Prefect global concurrency limit with slot decay capping submits per "
            "second across every worker (`prefect gcl create NAME --limit N "
            "--slot-decay-per-second R`)."
        ),
    )
    images_per_minute: float | None = Field(
        default=None,
        gt=0,
        description=(
            "The account's known limit in images a minute (OpenAI gpt-image-2: 5, 20, 50, 150 "
            "or 250 on tiers 1-5): submits are paced at it from the first one. Unset, the "
            "limit is learned from the provider's 429s and rate-limit headers."
        ),
    )
    rate_limit_wait_seconds: float = Field(
        default=RATE_LIMIT_WAIT_SECONDS,
        gt=0,
        description=(
            "How long one request may wait for the account's rate limit (429s are waited out, "
            "not counted as retries) before it fails as RateLimited; the run's timeout_seconds "
            "if shorter. The default lets a 1,000-row file finish at 5 images a minute."
        ),
    )
    max_retry_after_seconds: float = Field(
        default=RETRY_AFTER_CAP,
        gt=0,
        le=RETRY_AFTER_CAP,
        description=(
            "The longest a provider's Retry-After is honoured, in seconds (at most 300): a 429 "
            "asking for an hour, or a date years away, holds the account's submits or reads "
            "this long at most. Every wait still ends by the run's timeout_seconds."
        ),
    )

    price_per_image: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Your price of one image, in this provider's cost unit (USD, credits, CU): used for "
            "estimates and max_cost budgets where the provider documents none, or to override "
            "a documented one. The bill is still what the provider reports."
        ),
    )

    usd_per_unit: float | None = Field(
        default=None,
        gt=0,
        description=(
            "What one of this provider's cost units is worth in USD (a Scenario CU, a "
            "skills.video or gptimage2.ai credit, as your plan prices it): lets a route's "
            "`cheapest` strategy and a route's max_cost compare it with others. USD providers "
            "need none."
        ),
    )

    spend_limit: str | None = Field(
        default=None,
        description=(
            "Name of a Prefect global concurrency limit used as a spend bucket shared by every "
            "worker: its limit is the budget in `spend_limit_unit`s, its slot decay that budget "
            "per second (e.g. a daily cap). A submit whose estimate does not fit is refused."
        ),
    )
    spend_limit_unit: float = Field(
        default=0.01,
        gt=0,
        description="One slot of the spend limit, in this provider's cost unit (0.01 = a cent).",
    )
    spend_limit_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a submit waits for the spend limit's slots before it is refused.",
    )

    #: Where the adapter lives (imported on first use: a block loads without httpx clients).
    adapter_path: ClassVar[str]
    #: The secret fields, passed to the adapter in this order.
    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    #: Block fields passed to the adapter as keyword arguments when set.
    adapter_options: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _keys_given(self) -> ProviderCredentials:
        """An empty or blank key is refused when the block is made (and so before it is saved
        from Python or the CLI, or used after being saved blank from the UI), naming the field
        and the fix, instead of failing at the first paid call."""
        for name in self.secret_fields:
            value = getattr(self, name, None)
            if isinstance(value, SecretStr) and not value.get_secret_value().strip():
                raise ValueError(
                    f"{type(self).__name__}.{name} is empty: give the key (or create the block "
                    "from the environment: `gptimg blocks create`)"
                )
        return self

    def _build(self) -> Provider:
        """The adapter for these credentials: one rule for every provider's block."""
        module, _, name = self.adapter_path.partition(":")
        adapter_class = getattr(importlib.import_module(module), name)
        kw: dict[str, Any] = {"timeout": self.timeout_seconds}
        if self.base_url:
            kw["base_url"] = self.base_url
        kw.update(
            (option, value)
            for option in self.adapter_options
            if (value := getattr(self, option)) is not None
        )
        secrets = (getattr(self, field).get_secret_value() for field in self.secret_fields)
        adapter: Provider = adapter_class(*secrets, **kw)
        return adapter

    def get_provider(self) -> Provider:
        """The adapter for these credentials, shared per event loop (one connection pool)."""
        adapter = _cached_provider(self)
        adapter.price_per_image = self.price_per_image
        return adapter

    def get_client(self) -> Provider:
        return self.get_provider()


class OpenAIImageCredentials(ProviderCredentials):
    """Credentials for OpenAI's Images API (gpt-image-2).

    Example:
        ```python
        from gptimg_flows import OpenAIImageCredentials
        creds = OpenAIImageCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "GPT Image OpenAI Credentials"
    _block_type_slug = "gptimg-openai-credentials"
    _documentation_url = _DOCS  # type: ignore[assignment]
    provider_name: ClassVar[str] = "openai"
    adapter_path: ClassVar[str] = "gptimg_flows.providers.openai:OpenAIProvider"
    adapter_options: ClassVar[tuple[str, ...]] = ("model", "organization", "token_prices")

    api_key: SecretStr = Field(description="OpenAI API key (what OPENAI_API_KEY holds).")
    organization: str | None = Field(default=None, description="Optional OpenAI organization id.")
    model: str = Field(default="gpt-image-2", description="Image model name.")
    timeout_seconds: float = Field(
        default=600.0, gt=0, description="Image calls are synchronous and can take minutes."
    )
    token_prices: TokenPrices | None = Field(
        default=None,
        description=(
            "USD per 1M tokens, for changed or negotiated prices (default: gpt-image-2's "
            "text in 5, cached text 1.25, image in 8, cached image 2, image out 30)."
        ),
    )


class ScenarioCredentials(ProviderCredentials):
    """Credentials for Scenario's API (model_openai-gpt-image-2): an API key and secret.

    Example:
        ```python
        from gptimg_flows import ScenarioCredentials
        creds = ScenarioCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "GPT Image Scenario Credentials"
    _block_type_slug = "gptimg-scenario-credentials"
    _documentation_url = _DOCS  # type: ignore[assignment]
    provider_name: ClassVar[str] = "scenario"
    adapter_path: ClassVar[str] = "gptimg_flows.providers.scenario:ScenarioProvider"
    secret_fields: ClassVar[tuple[str, ...]] = ("api_key", "api_secret")

    api_key: SecretStr = Field(description="Scenario API key (what SCENARIO_SDK_API_KEY holds).")
    api_secret: SecretStr = Field(
        description="Scenario API secret (what SCENARIO_SDK_API_SECRET holds)."
    )


class RunwareCredentials(ProviderCredentials):
    """Credentials for Runware's REST API (openai:gpt-image@2).

    Example:
        ```python
        from gptimg_flows import RunwareCredentials
        creds = RunwareCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "GPT Image Runware Credentials"
    _block_type_slug = "gptimg-runware-credentials"
    _documentation_url = _DOCS  # type: ignore[assignment]
    provider_name: ClassVar[str] = "runware"
    adapter_path: ClassVar[str] = "gptimg_flows.providers.runware:RunwareProvider"

    api_key: SecretStr = Field(description="Runware API key (what RUNWARE_API_KEY holds).")


class SkillsVideoCredentials(ProviderCredentials):
    """Credentials for skills.video's generation API (openai/gpt-image-2).

    Example:
        ```python
        from gptimg_flows import SkillsVideoCredentials
        creds = SkillsVideoCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "GPT Image skills.video Credentials"
    _block_type_slug = "gptimg-skillsvideo-credentials"
    _documentation_url = _DOCS  # type: ignore[assignment]
    provider_name: ClassVar[str] = "skillsvideo"
    adapter_path: ClassVar[str] = "gptimg_flows.providers.skillsvideo:SkillsVideoProvider"

    api_key: SecretStr = Field(
        description="skills.video API key (what SKILLS_VIDEO_API_KEY holds)."
    )


class GptImage2AICredentials(ProviderCredentials):
    """Credentials for gptimage2.ai's generate API.

    Example:
        ```python
        from gptimg_flows import GptImage2AICredentials
        creds = GptImage2AICredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "GPT Image gptimage2.ai Credentials"
    _block_type_slug = "gptimg-gptimage2ai-credentials"
    _documentation_url = _DOCS  # type: ignore[assignment]
    provider_name: ClassVar[str] = "gptimage2ai"
    adapter_path: ClassVar[str] = "gptimg_flows.providers.gptimage2ai:GptImage2AIProvider"

    api_key: SecretStr = Field(description="gptimage2.ai API key (what GPTIMAGE2_API_KEY holds).")


CREDENTIAL_BLOCKS: tuple[type[ProviderCredentials], ...] = (
    OpenAIImageCredentials,
    ScenarioCredentials,
    RunwareCredentials,
    SkillsVideoCredentials,
    GptImage2AICredentials,
)


class ImageArchive(Block):
    """Where generated images are kept: a local folder or any fsspec URL (s3://, gs://, …).

    Images are written once under content-addressed names with a JSON sidecar each.

    Example:
        ```python
        from gptimg_flows import ImageArchive
        archive = ImageArchive.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "GPT Image Archive"
    _block_type_slug = "gptimg-image-archive"
    _documentation_url = _DOCS  # type: ignore[assignment]

    basepath: str = Field(
        default_factory=default_basepath,
        description="Local folder or fsspec URL, e.g. s3://bucket/prefix.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options, e.g. {'client_kwargs': {'endpoint_url': ...}} for s3.",
    )
    secret_storage_options: SecretStr | None = Field(
        default=None,
        description="JSON object merged into storage_options, kept secret (e.g. S3 keys).",
    )

    read_storage_options: SecretStr | None = Field(
        default=None,
        description=(
            "JSON object, kept secret: protocol → fsspec options for prompt files, images and "
            'masks this archive\'s runs read from other stores, e.g. {"gs": {"token": ...}} '
            "(the archive's own store is read with storage_options)."
        ),
    )
    s3_bucket: str | None = Field(
        default=None,
        description=(
            "The name of a saved prefect-aws S3Bucket block to archive into instead of "
            "basepath: its folder is the root, its credentials give keys, region and "
            "endpoint (needs `pip install 'gptimg-flows[aws]'`)."
        ),
    )
    public_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description=(
            "An http(s) URL serving this archive's basepath (a CDN or public bucket): "
            "artifacts then link each image permanently instead of by a presigned URL."
        ),
    )
    link_expiry_seconds: int = Field(
        default=LINK_EXPIRY_SECONDS,
        ge=60,
        le=LINK_EXPIRY_SECONDS,
        description="How long a presigned link in an artifact works (S3 allows 7 days at most).",
    )

    def get_archive(self) -> Archive:
        import json

        options = dict(self.storage_options)
        if self.secret_storage_options is not None:
            options.update(json.loads(self.secret_storage_options.get_secret_value()))
        return Archive(
            self.basepath,
            options,
            public_base_url=self.public_base_url,
            link_expiry_seconds=self.link_expiry_seconds,
            read_options=self.read_options(),
        )

    def read_options(self) -> dict[str, dict[str, Any]]:
        """`read_storage_options`, parsed (a malformed one is refused, naming the field)."""
        import json

        if self.read_storage_options is None:
            return {}
        try:
            value = json.loads(self.read_storage_options.get_secret_value())
        except ValueError:
            value = None
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise InvalidRequest(
                "archive: read_storage_options must be a JSON object of protocol → options",
                field="read_storage_options",
            )
        return value


# -- adapter cache ------------------------------------------------------------------------------

_ADAPTERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Provider]] = (
    weakref.WeakKeyDictionary()
)


def _cached_provider(block: ProviderCredentials) -> Provider:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return block._build()
    # The fingerprint includes the secret values so rotated keys get a new adapter; it only
    # ever lives in this in-memory dict.
    fingerprint = type(block).__name__ + repr(
        sorted(
            (k, v.get_secret_value() if isinstance(v, SecretStr) else v)
            for k, v in block.__dict__.items()
            if not k.startswith("_")
        )
    )
    per_loop = _ADAPTERS.setdefault(loop, {})
    adapter = per_loop.get(fingerprint)
    if adapter is None:
        adapter = per_loop[fingerprint] = block._build()
    return adapter


def offline_provider(name: str = "offline") -> Provider:
    """`offline` (strict: OpenAI's rules) or `offline-lenient` (any size, seed)."""
    return LenientOfflineProvider() if name == LenientOfflineProvider.name else OfflineProvider()


#: What a flow's `provider` is once resolved: a credentials block, or "offline".
ProviderSpec = ProviderCredentials | str


def provider_of(spec: ProviderSpec) -> Provider:
    if isinstance(spec, ProviderCredentials):
        return spec.get_provider()
    if spec in OFFLINE_NAMES:
        return offline_provider(spec)
    raise InvalidRequest(f"unknown provider {spec!r}", field="provider")
