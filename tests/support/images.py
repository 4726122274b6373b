"""Images tests hand to the flows and the adapters: a plain picture file, a mask whose top
half may be edited, and an in-memory PNG input."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from gptimg_flows.models import InputImage


def png_file(path: Path, size: tuple[int, int] = (256, 256)) -> Path:
    Image.new("RGB", size, (40, 90, 160)).save(path)
    return path


def sky_mask(path: Path, size: tuple[int, int] = (256, 256)) -> Path:
    """Transparent (to be edited) in its top half, opaque below."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0], size[1] // 2))
    mask.save(path)
    return path


def png_input(img: Image.Image) -> InputImage:
    """`img` as a loaded PNG input, as load_image would make it."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = buf.getvalue()
    return InputImage(
        data=data,
        mime="image/png",
        width=img.width,
        height=img.height,
        sha256=InputImage.digest(data),
        has_alpha=img.mode == "RGBA",
    )
