"""Loading input images (paths, fsspec URLs, http URLs, bytes) and preparing masks.

Everything here runs before a submit, so a bad input costs nothing: a missing file, a file that
is not an image, one too big, a URL pointing into a private network, or a mask that does not fit
its image all become `InvalidRequest` naming the input. What may be read at all is
`media.reads`' rule.
"""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.reads import ReadRules, kind_of, read_bytes
from gptimg_flows.media.sniff import sniff
from gptimg_flows.models import InputImage

log = logging.getLogger("gptimg_flows.media.inputs")

#: Default cap on one input image (OpenAI takes up to 50 MB per image; masks under 4 MB).
MAX_INPUT_BYTES = 50 * 1024 * 1024


def _describe(source: str | bytes) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else source


async def read_source(
    source: str | bytes,
    field: str,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    rules: ReadRules | None = None,
) -> tuple[bytes, str | None]:
    """Bytes of an input, read under the one read rule (`media.reads`), and, for http(s)
    sources, the URL a provider could fetch itself."""
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise InvalidRequest(f"{field}: {len(source):,} bytes exceeds the cap", field=field)
        return source, None
    text = source.strip()
    data, _ = await asyncio.to_thread(read_bytes, text, field, rules or ReadRules(), max_bytes)
    return data, text if kind_of(text, field) == "http" else None


async def load_image(
    source: str | bytes,
    field: str,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    rules: ReadRules | None = None,
) -> InputImage:
    """Load and identify one input image."""
    data, url = await read_source(source, field, max_bytes=max_bytes, rules=rules)
    try:
        info = await asyncio.to_thread(sniff, data)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {_describe(source)} is {exc}", field=field) from None
    name = Path(urlsplit(source).path).name if isinstance(source, str) else field
    return InputImage(
        data=data,
        mime=info.mime,
        width=info.width,
        height=info.height,
        sha256=InputImage.digest(data),
        name=name or field,
        url=url,
        has_alpha=info.has_alpha,
    )


def _check_marks_something(rgba: Image.Image) -> None:
    """A mask with no transparent pixel asks for no change: refused before it is paid for."""
    lowest = rgba.getchannel("A").getextrema()[0]
    if isinstance(lowest, int | float) and lowest > 0:
        raise InvalidRequest(
            "mask marks nothing to edit: none of its pixels is transparent (alpha 0 marks "
            "the area to change)",
            field="mask",
        )


def prepare_mask(mask: InputImage, image: InputImage) -> InputImage:
    """A PNG with alpha (alpha 0 = edit here) of the image's size, from what the user gave.

    A black-and-white mask without alpha is converted (white = edit, black = keep) and logged;
    any other mask without alpha is refused rather than guessed at.
    """
    if (mask.width, mask.height) != (image.width, image.height):
        raise InvalidRequest(
            f"mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
            "they must be the same size",
            field="mask",
        )
    img = Image.open(io.BytesIO(mask.data))
    if mask.has_alpha:
        if mask.mime == "image/png":
            _check_marks_something(img.convert("RGBA"))
            return mask
        rgba = img.convert("RGBA")
    else:
        grey = img.convert("L")
        levels = {v for v, count in enumerate(grey.histogram()) if count}
        if not levels <= set(range(0, 16)) | set(range(240, 256)):
            raise InvalidRequest(
                "mask has no alpha channel and is not a black-and-white mask; give a PNG whose "
                "transparent pixels mark the area to edit",
                field="mask",
            )
        log.warning("mask has no alpha channel: converting black/white (white = area to edit)")
        rgba = Image.new("RGBA", grey.size, (0, 0, 0, 255))
        rgba.putalpha(grey.point(lambda v: 0 if v >= 128 else 255))
    _check_marks_something(rgba)
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    data = buf.getvalue()
    return InputImage(
        data=data,
        mime="image/png",
        width=rgba.width,
        height=rgba.height,
        sha256=InputImage.digest(data),
        name="mask.png",
        url=None,
        has_alpha=True,
    )
