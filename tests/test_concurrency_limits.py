"""Provider limits are Prefect global concurrency limits held by the server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from gptimg_flows import batch_generate, generate_images
from gptimg_flows.errors import InvalidRequest

pytestmark = pytest.mark.usefixtures("prefect_server")


async def _limit(limit: int) -> str:
    name = f"gptimg-test-{uuid.uuid4().hex[:8]}"
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit)
        )
    return name


async def test_global_limit_keeps_running_jobs_within_the_providers_limit(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    k = 2
    emulator.configure(latency=0.6, max_concurrent_jobs=k)
    block = provider_block("runware", concurrency_limit=await _limit(k))
    result = await batch_generate(
        prompts=[f"limited {i}" for i in range(8)],
        provider=block,
        archive=str(archive_dir),
        concurrency=8,
        size="256x256",
    )
    assert len(result.images) == 8 and not result.failures, result.failures
    ledger = emulator.ledger()
    assert ledger["peak_concurrent_jobs"]["runware"] == k, ledger["peak_concurrent_jobs"]
    assert "429" not in ledger["rejected"].get("runware", {}), ledger["rejected"]


async def test_without_the_limit_the_provider_would_refuse(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """The control case: the same batch with no limit meets the provider's 429s."""
    emulator.configure(latency=0.6, max_concurrent_jobs=2)
    await batch_generate(
        prompts=[f"unlimited {i}" for i in range(8)],
        provider=provider_block("runware"),
        archive=str(archive_dir),
        concurrency=8,
        size="256x256",
    )
    assert emulator.ledger()["rejected"]["runware"].get("429", 0) > 0


async def test_a_named_limit_that_does_not_exist_is_an_error_before_paying(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    block = provider_block("runware", concurrency_limit="no-such-limit")
    with pytest.raises(InvalidRequest, match="prefect gcl create no-such-limit"):
        await generate_images(
            prompt="a fox", provider=block, archive=str(archive_dir), size="256x256"
        )
    assert emulator.ledger()["submissions"] == []
