"""No credential ever reaches what a user or an attacker could read after a run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

from gptimg_flows import batch_generate, generate_edit_archive, generate_images
from gptimg_flows.errors import AuthError

pytestmark = pytest.mark.usefixtures("prefect_server")

KEYS: dict[str, Any] = {
    "openai": "sk-DISTINCT-openai-7f3a9c",
    "scenario": ("scn-DISTINCT-key-51b2", "scn-DISTINCT-secret-e0d4"),
    "runware": "rw-DISTINCT-runware-88aa",
    "skillsvideo": "sv-DISTINCT-skills-3c3c",
    "gptimage2ai": "gi-DISTINCT-gptimage2-9d9d",
}
WRONG = "sk-DISTINCT-wrong-key-0b0b"
SECRETS = [WRONG, *(v for key in KEYS.values() for v in (key if isinstance(key, tuple) else [key]))]


def _block(provider_block: Any, name: str, **kw: Any) -> Any:
    key = KEYS[name]
    if isinstance(key, tuple):
        return provider_block(name, api_key=key[0], api_secret=key[1], **kw)
    return provider_block(name, api_key=key, **kw)


def _scan(root: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    return hits


async def test_keys_appear_nowhere_after_every_flow_and_a_refused_key(
    provider_block: Any, emulator: Any, archive_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    emulator.configure(keys=KEYS)
    for name, size in [("scenario", "256x256"), ("skillsvideo", "1:1"), ("gptimage2ai", "1:1")]:
        await generate_images(prompt=f"secret {name}", provider=_block(provider_block, name),
                              archive=str(archive_dir), size=size)  # fmt: skip
    from PIL import Image

    mask = tmp_path / "mask.png"
    Image.new("RGBA", (256, 256), (0, 0, 0, 0)).save(mask)
    await generate_edit_archive(prompt="secret pipeline", edit_prompt="more", mask=str(mask),
                                provider=_block(provider_block, "openai"),
                                archive=str(archive_dir), size="256x256")  # fmt: skip
    await batch_generate(
        prompts=["secret a", "secret b"], provider=_block(provider_block, "runware"),
        archive=str(archive_dir), size="256x256",
    )  # fmt: skip
    with pytest.raises(AuthError) as refused:
        await generate_images(prompt="secret refused", archive=str(archive_dir),
                              provider=provider_block("openai", api_key=WRONG))  # fmt: skip
    assert not [s for s in SECRETS if s in str(refused.value) or s in repr(refused.value)]

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    await asyncio.to_thread(APILogWorker.drain_all)
    await asyncio.to_thread(EventsWorker.drain_all)
    await asyncio.sleep(2)  # let the server persist what it was sent

    db_url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    db_dir = Path(db_url.split(":///", 1)[1]).parent
    assert list(db_dir.glob("*.db")), f"no Prefect database under {db_dir}"
    places = [db_dir, Path(str(PREFECT_HOME.value())), archive_dir]
    hits = [hit for place in places for hit in _scan(place)]
    out, err = capfd.readouterr()
    hits += [f"output: {s}" for s in SECRETS if s in caplog.text + out + err]
    assert hits == [], hits
    # The scan reads the right places: the prompts (not secret) are there to be found.
    stored = b"".join(p.read_bytes() for p in db_dir.rglob("*") if p.is_file())
    assert b"secret pipeline" in stored and b"secret refused" in stored
