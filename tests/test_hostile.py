"""The smaller findings of the hostile-input review: templates that build huge strings,
providers that echo credentials back, and what killed writes leave behind."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gptimg_flows.archive.store import Archive
from gptimg_flows.errors import InvalidRequest, ProviderError
from gptimg_flows.models import ImageRequest
from gptimg_flows.providers.gptimage2ai import GptImage2AIProvider
from gptimg_flows.providers.openai import OpenAIProvider
from gptimg_flows.providers.scenario import ScenarioProvider
from gptimg_flows.rows import fill_row_template, template_fields


@pytest.mark.parametrize(
    "template",
    ["{prompt:>400000000}", "{name!r} on white", "{name:{width}}", "{name.__class__}", "{a[0]}"],
)
def test_a_template_with_a_format_spec_is_refused_before_building_anything(
    template: str,
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        fill_row_template(template, {"prompt": "x", "name": "teapot", "width": "9", "a": "b"})
    assert caught.value.field == "prompt_template"
    assert template_fields("shot of {name}, {style} light") == ["name", "style"]


def _echo(status: int = 400) -> httpx.MockTransport:
    """A provider that echoes the request's Authorization header in its error message."""

    def answer(request: httpx.Request) -> httpx.Response:
        echoed = request.headers.get("authorization", "")
        body = {"error": {"message": f"bad request; you sent Authorization: {echoed}"}}
        return httpx.Response(status, json=body)

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_a_provider_echoing_its_credentials_never_puts_them_in_an_error(
    status: int,
) -> None:
    key, secret = "key-ABCDEFGHIJKLMNOP", "secret-QRSTUVWXYZ123456"
    adapters: list[Any] = [
        OpenAIProvider(key, base_url="https://api.example/v1", transport=_echo(status)),
        GptImage2AIProvider(key, base_url="https://api.example", transport=_echo(status)),
        ScenarioProvider(key, secret, base_url="https://api.example/v1", transport=_echo(status)),
    ]
    basic = base64.b64encode(f"{key}:{secret}".encode()).decode()
    for adapter in adapters:
        with pytest.raises(ProviderError) as caught:
            await adapter.submit(ImageRequest(prompt="a lighthouse"), None, "k" * 64)
        text = str(caught.value)
        assert "you sent Authorization" in text, text  # the provider's words are kept …
        for secret_text in (key, secret, basic):
            assert secret_text not in text, f"{adapter.name}: {text}"  # … not the keys
        await adapter.aclose()


def test_what_killed_writes_left_is_swept_when_an_archive_is_opened(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    (root / "images" / "ab").mkdir(parents=True)
    old = root / "images" / "ab" / ".abc.png.1234.tmp"
    fresh = root / "images" / "ab" / ".abd.png.5678.tmp"  # a write in flight right now
    kept = root / "images" / "ab" / "abc.png"
    for path in (old, fresh, kept):
        path.write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    os.utime(kept, (day_ago, day_ago))
    assert Archive(str(root)).sweep_stale() == 1
    assert not old.exists() and fresh.exists() and kept.exists()


def test_partial_downloads_a_killed_process_left_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptimg_flows.media import download

    spool = tmp_path / "spool"
    spool.mkdir()
    old, fresh = spool / "dl-old.part", spool / "dl-new.part"
    for path in (old, fresh):
        path.write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    monkeypatch.setenv("GPTIMG_SPOOL", str(spool))
    assert download.spool_dir() == spool
    assert not old.exists() and fresh.exists()
