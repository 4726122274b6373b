"""Draws real, deterministic images from a prompt, and applies masked edits pixel-exactly.

Used by the offline provider and by the provider emulator, so every test and demo handles real
image bytes of the requested size and format without a key or a network.
"""

from __future__ import annotations

import hashlib
import io
import random
import textwrap
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from gptimg_flows.textcheck.expected import quoted, without_quotes

Format = Literal["png", "jpeg", "webp"]
MIME: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _rng(prompt: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _colour(rng: random.Random, alpha: int = 255) -> tuple[int, int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256), alpha)


def draw(
    prompt: str, width: int, height: int, seed: int = 0, transparent: bool = False
) -> Image.Image:
    """An RGBA picture visibly made from the prompt: its colours, shapes and its words."""
    rng = _rng(prompt, seed)
    top, bottom = _colour(rng), _colour(rng)
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    if not transparent:
        # Vertical gradient built from a 1-pixel column, then stretched: fast at any size.
        column = Image.new("RGBA", (1, 256))
        for y in range(256):
            t = y / 255
            column.putpixel(
                (0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
            )
        img = column.resize((width, height), Image.Resampling.BILINEAR)
    shapes = ImageDraw.Draw(img)
    unit = max(8, min(width, height) // 6)
    for word in prompt.split()[:12] or ["?"]:
        wr = _rng(word, seed)
        x, y = rng.randrange(width), rng.randrange(height)
        r = wr.randrange(unit // 2, unit + 1)
        box = (x - r, y - r, x + r, y + r)
        if len(word) % 2:
            shapes.ellipse(box, fill=_colour(wr, 220), outline=(255, 255, 255, 255))
        else:
            shapes.rectangle(box, fill=_colour(wr, 220), outline=(0, 0, 0, 255))
    size = max(10, min(width, height) // 16)
    font = ImageFont.load_default(size=size)
    chars = max(8, int(width / (size * 0.6)))
    # The caption leaves out the quoted words: they are the headline's, drawn once, so the text
    # check reads them where a model would put them, not twice.
    text = "\n".join(textwrap.wrap(without_quotes(prompt), chars)[:6])
    shapes.multiline_text(
        (size // 2, size // 2),
        text,
        font=font,
        fill=(255, 255, 255, 255),
        stroke_width=max(1, size // 12),
        stroke_fill=(0, 0, 0, 255),
    )
    _headline(img, quoted(prompt), width, height, rng)
    return img


#: How a headline is drawn; the renderer picks one per prompt and seed, so the text check is
#: tried on more than one look: on a light or a dark plate, outlined over the busy picture,
#: bold, slanted, or blocky (drawn small and scaled up, as a pixel font looks).
STYLES = ("plate", "dark plate", "outline", "bold", "slanted", "blocky")


def _wrap_at(line: str, longest: int = 22) -> int:
    """Characters a wrapped line may hold: lines of about equal length, none over `longest`
    unless a single word is."""
    parts = -(-len(line) // longest)
    return max(1, -(-len(line) // parts))


def _headline(
    img: Image.Image, lines: list[str], width: int, height: int, rng: random.Random
) -> None:
    """The text a prompt quotes, large in the lower half, as a model asked for a poster's words
    draws them (what the text check reads back)."""
    if not lines:
        return
    # A long headline wraps, as a poster's would, so its letters stay large.
    lines = [part for line in lines[:3] for part in textwrap.wrap(line, _wrap_at(line))][:4]
    style = rng.choice(STYLES)
    fit = width * 0.85 / (0.62 * max(map(len, lines)))
    size = max(12, int(min(height // 10, fit) * rng.uniform(0.7, 1.0)))
    scale = 2 if style == "blocky" and size >= 32 else 1
    points = max(8, size // scale)
    font = ImageFont.load_default(size=points)
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    canvas = ImageDraw.Draw(layer)
    gap = points // 3
    boxes = [canvas.textbbox((0, 0), line, font=font) for line in lines]
    tall = sum(b[3] - b[1] for b in boxes) + gap * (len(lines) - 1)
    wide = max(b[2] - b[0] for b in boxes)
    pad = points // 2
    left = (width // scale - wide) // 2
    top = int(height // scale * rng.uniform(0.55, 0.7)) - tall // 2
    top = max(pad, min(top, height // scale - tall - pad))
    light = (rng.randrange(215, 256), rng.randrange(215, 256), rng.randrange(200, 256), 255)
    dark = (rng.randrange(0, 60), rng.randrange(0, 60), rng.randrange(0, 80), 255)
    ink: tuple[int, int, int, int] = light if style in ("dark plate", "outline") else dark
    plate = None if style == "outline" else dark if style == "dark plate" else light
    if plate is not None:
        canvas.rectangle((left - pad, top - pad, left + wide + pad, top + tall + pad), fill=plate)
    stroke = {"outline": max(2, points // 10), "bold": max(1, points // 24)}.get(style, 0)
    y = top
    for line, box in zip(lines, boxes, strict=True):
        x = (width // scale - (box[2] - box[0])) // 2 - box[0]
        canvas.text(
            (x, y - box[1]),
            line,
            font=font,
            fill=ink,
            stroke_width=stroke,
            stroke_fill=(0, 0, 0, 255) if style == "outline" else ink,
        )
        y += box[3] - box[1] + gap
    if style == "blocky":
        layer = layer.crop((0, 0, width // scale, height // scale)).resize(
            (width // scale * scale, height // scale * scale), Image.Resampling.NEAREST
        )
        layer = layer.crop((0, 0, width, height)) if layer.size != img.size else layer
    elif style == "slanted":
        shear = 0.2
        layer = layer.transform(
            img.size,
            Image.Transform.AFFINE,
            (1, shear, -shear * (top + tall / 2), 0, 1, 0),
            Image.Resampling.BICUBIC,
        )
    img.alpha_composite(layer.crop((0, 0, width, height)) if layer.size != img.size else layer)


def encode(img: Image.Image, fmt: Format, quality: int | None = None) -> bytes:
    """Encode losslessly where the format allows, so masked edits stay pixel-exact."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "webp":
        if quality is None:
            img.save(buf, "WEBP", lossless=True, quality=30, method=0)
        else:
            img.save(buf, "WEBP", quality=quality)
    else:
        img.convert("RGB").save(buf, "JPEG", quality=quality or 90)
    return buf.getvalue()


def render(
    prompt: str,
    width: int,
    height: int,
    fmt: Format = "png",
    seed: int = 0,
    transparent: bool = False,
    quality: int | None = None,
) -> bytes:
    """Image bytes for a prompt: same prompt, size, format and seed → same bytes."""
    return encode(draw(prompt, width, height, seed, transparent), fmt, quality)


def edit(
    base: Image.Image,
    prompt: str,
    mask: Image.Image | None,
    seed: int = 0,
) -> Image.Image:
    """Repaint `base` from `prompt`. Where the mask is opaque (alpha 255) pixels stay exactly.

    Without a mask the whole picture is blended with the new drawing, so the result is visibly
    derived from the input.
    """
    base = base.convert("RGBA")
    fresh = draw(prompt, base.width, base.height, seed)
    if mask is None:
        return Image.blend(base, fresh, 0.5)
    alpha = mask.convert("RGBA").getchannel("A")
    if alpha.size != base.size:
        raise ValueError(f"mask is {alpha.size}, image is {base.size}")
    # Paint the new drawing only where the mask is not fully opaque.
    editable = alpha.point(lambda a: 255 if a < 255 else 0)
    out = base.copy()
    out.paste(fresh, (0, 0), editable)
    return out
