"""Recognising image bytes: what type they really are, their size, whether they have alpha.

A provider that answers an "image" URL with an HTML error page must not end up archived as a
PNG, so every byte stream we keep passes through `sniff` first.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

_MIME_BY_FORMAT = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}

#: The most pixels an image we open may have; checked from its header before any decode
#: (Pillow itself only warns below twice its limit, after decoding has begun).
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    width: int
    height: int
    has_alpha: bool

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.mime, "bin")


def magic_mime(head: bytes) -> str | None:
    """The image type the first bytes announce, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


#: Above this size `sniff` checks the file's end marker instead of walking every chunk:
#: Pillow's walk reads each chunk into memory whole.
FULL_VERIFY_MAX_BYTES = 8 * 2**20


def ends_whole(path: Path, mime: str) -> bool:
    """The file ends the way its format ends (PNG IEND, JPEG EOI, RIFF size = file size)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        fh.seek(max(0, size - 12))
        tail = fh.read(12)
    if mime == "image/png":
        return tail.endswith(b"IEND\xaeB`\x82")
    if mime == "image/jpeg":
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if mime == "image/webp":
        return int.from_bytes(head[4:8], "little") + 8 == size
    return True


def sniff_file(path: Path) -> ImageInfo:
    """`sniff` for a downloaded file: a full structural check when small, header + end marker
    when large, so memory stays flat for big images."""
    if path.stat().st_size <= FULL_VERIFY_MAX_BYTES:
        return sniff(path)
    info = sniff(path, verify=False)
    if not ends_whole(path, info.mime):
        raise ValueError("a truncated image (its end marker is missing)")
    return info


def sniff(source: bytes | Path, *, verify: bool = True) -> ImageInfo:
    """Identify an image and check it is whole; raise ValueError with a readable reason.

    `verify` walks the file's structure (PNG chunk CRCs, etc.) without decoding all pixels, so
    a 25 MB image costs little memory.
    """
    opener = io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(source, bytes):
        head = source[:16]
    else:
        with Path(source).open("rb") as fh:
            head = fh.read(16)
    if magic_mime(head) is None:  # what it holds is not quoted: it may be anything
        raise ValueError("not an image (no image signature in its first bytes)")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(opener)
        with img:
            fmt = img.format or ""
            width, height = img.size
            if width * height > MAX_PIXELS:  # from the header, before anything is decoded
                raise ValueError(
                    f"{width}x{height}, {width * height:,} pixels: over the "
                    f"{MAX_PIXELS:,}-pixel limit, so it is not decoded"
                )
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (
                img.mode == "P" and "transparency" in img.info
            )
            if verify:
                img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    mime = _MIME_BY_FORMAT.get(fmt)
    if mime is None:
        raise ValueError(f"unsupported image format {fmt or 'unknown'}")
    return ImageInfo(mime=mime, width=width, height=height, has_alpha=has_alpha)
