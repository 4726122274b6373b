"""The no-key demo: generate → edit the sky through a mask → archive, on the offline provider."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

from PIL import Image

from gptimg_flows.flows import PipelineResult, generate_edit_archive

SIZE = (1024, 1024)


def sky_mask(path: Path, size: tuple[int, int] = SIZE) -> Path:
    """A mask whose top half is transparent: "edit the sky, keep the rest"."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0], size[1] // 2))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


async def run_demo(archive: str, prompt: str, edit_prompt: str) -> PipelineResult:
    base = Path(archive) if "://" not in archive else Path(".gptimg-demo")
    mask = await asyncio.to_thread(sky_mask, base.absolute() / "demo-inputs" / "sky-mask.png")
    result: PipelineResult = await generate_edit_archive(
        prompt=prompt,
        edit_prompt=edit_prompt,
        provider="offline",
        mask=str(mask),
        archive=archive if "://" in archive else os.path.abspath(archive),
        size=f"{SIZE[0]}x{SIZE[1]}",
    )
    return result
