"""A provider's own name as `provider` (issue #33): where no block has that name, the one saved
block of that provider, else a block from the environment's key, else a message that says
what to set; several saved blocks are listed to choose from."""

from __future__ import annotations

from typing import Any

import pytest

from gptimg_flows.blocks import resolve
from gptimg_flows.blocks.credentials import OpenAIImageCredentials
from gptimg_flows.errors import InvalidRequest

pytestmark = pytest.mark.usefixtures("prefect_server")


async def test_a_provider_name_finds_its_one_saved_block(monkeypatch: pytest.MonkeyPatch) -> None:
    await OpenAIImageCredentials(api_key="sk-one", base_url="http://127.0.0.1:9/v1").asave(
        "the-only-openai", overwrite=True
    )

    async def one(cls: Any) -> list[str]:
        return ["the-only-openai"]

    monkeypatch.setattr(resolve, "_saved_of", one)
    spec = (await resolve.resolve_provider("openai")).spec  # type: ignore[union-attr]
    assert isinstance(spec, OpenAIImageCredentials)
    assert spec.api_key.get_secret_value() == "sk-one"


async def test_several_saved_blocks_are_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def two(cls: Any) -> list[str]:
        return ["openai-a", "openai-b"]

    monkeypatch.setattr(resolve, "_saved_of", two)
    with pytest.raises(InvalidRequest, match=r"2 saved openai blocks could be meant \(openai-a"):
        await resolve.resolve_provider("openai")


async def test_with_none_saved_the_environment_key_is_used_or_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def none(cls: Any) -> list[str]:
        return []

    monkeypatch.setattr(resolve, "_saved_of", none)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InvalidRequest, match=r"no saved openai block, and OPENAI_API_KEY is not"):
        await resolve.resolve_provider("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    spec = (await resolve.resolve_provider("openai")).spec  # type: ignore[union-attr]
    assert isinstance(spec, OpenAIImageCredentials)
    assert spec.api_key.get_secret_value() == "sk-from-env"
