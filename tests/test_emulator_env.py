"""The README's emulator recipe: `--print-env`, then `gptimg blocks create`, then generate."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gptimg_flows import generate_images
from gptimg_flows.blocks.from_env import save_blocks_from_env

pytestmark = pytest.mark.usefixtures("prefect_server")


def printed_env(port: int) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gptimg_flows.testing.emulator", "--port", str(port), "--print-env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    env = {}
    for line in done.stdout.splitlines():
        assert line.startswith("export "), line
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


async def test_printed_env_makes_blocks_every_provider_accepts(
    emulator: Any, archive_dir: Path
) -> None:
    port = urlsplit(emulator.url).port
    assert port is not None
    env = printed_env(port)
    report = await save_blocks_from_env(env, prefix="emulator")
    saved = sorted(b.name for b in report.saved)
    providers = ["gptimage2ai", "openai", "runware", "scenario", "skillsvideo"]
    assert saved == [f"emulator-{p}" for p in providers], report.lines()
    # no block name equals a key, so the CLI's secret scrubbing never hides a name
    assert not any(value in name for name in saved for value in env.values()), saved
    sizes = {"openai": "256x256", "scenario": "256x256", "runware": "256x256", "skillsvideo": "1:1"}
    for provider, size in sizes.items():
        name = f"emulator-{provider}"
        images = await generate_images(
            prompt="a kite", provider=name, archive=str(archive_dir), size=size
        )
        assert len(images) == 1 and Path(images[0].uri).is_file(), name
    assert len(emulator.ledger()["submissions"]) == 4
