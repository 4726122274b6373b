"""Small previews of archived images, embeddable in the Prefect UI as `data:` URIs.

The UI can only show images from http(s) URLs or `data:` URIs, and most archives (a local
folder, a private bucket) have no URL a browser may open. A ~200 px WebP of a few KB, embedded
in the artifact's markdown, works for every archive. Each is made once, from the local file as
the image is archived (or from the archived image the first time an older one is shown), and
kept beside it under `_thumbs/`.
"""

from __future__ import annotations

import base64
import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from gptimg_flows.archive.layout import thumb_rel
from gptimg_flows.archive.store import Archive

#: The longest side of a preview, in pixels: legible in a gallery, a few KB as WebP.
THUMB_SIDE = 192
THUMB_QUALITY = 60


#: Images of more pixels than this are previewed one at a time in the process: decoding one
#: takes its full size in memory (a 3840x2160 RGBA image is 33 MB), and a batch archives many
#: at once (bench/RESULTS.md: 20 concurrent 25 MB images within 100 MB of RSS).
BIG_PIXELS = 4_000_000
BIG_BYTES = 8 * 2**20
_ONE_BIG = threading.Lock()
#: PNG chunks a preview needs; others (text, metadata, private chunks of any size) are skipped
#: unread, since Pillow would otherwise read each whole into memory.
_PNG_KEEP = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def thumbnail_bytes(source: bytes | str | Path, side: int = THUMB_SIDE) -> bytes:
    """A WebP preview whose longest side is at most `side` (aspect ratio kept)."""
    size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
    if size > BIG_BYTES:  # its pixel data alone may be this big: one at a time from the start
        with _ONE_BIG, _open(source) as fh, Image.open(fh) as opened:
            return _preview(opened, side)
    with _open(source) as fh, Image.open(fh) as opened:
        if opened.width * opened.height <= BIG_PIXELS:
            return _preview(opened, side)
        with _ONE_BIG:
            return _preview(opened, side)


def _open(source: bytes | str | Path) -> BinaryIO:
    fh: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    if fh.read(8) != _PNG_SIGNATURE:
        fh.seek(0)
        return fh
    with fh:
        return _png_essentials(fh)


def _png_essentials(fh: BinaryIO) -> BinaryIO:
    """The PNG with only the chunks in _PNG_KEEP, read chunk by chunk (after the signature)."""
    out = io.BytesIO()
    out.write(_PNG_SIGNATURE)
    while header := fh.read(8):
        if len(header) < 8:
            break
        length = int.from_bytes(header[:4], "big")
        if header[4:] in _PNG_KEEP:
            out.write(header)
            out.write(fh.read(length + 4))  # data and CRC
        else:
            fh.seek(length + 4, io.SEEK_CUR)
        if header[4:] == b"IEND":
            break
    out.seek(0)
    return out


def _preview(opened: Image.Image, side: int) -> bytes:
    opened.draft("RGB", (side, side))  # JPEG decodes at a reduced scale: much less work
    opened.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    img: Image.Image = opened
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    out = io.BytesIO()
    img.save(out, "WEBP", quality=THUMB_QUALITY, method=0)  # half the CPU of 2 (#36)
    return out.getvalue()


def data_uri(webp: bytes) -> str:
    return "data:image/webp;base64," + base64.b64encode(webp).decode("ascii")


#: Previews made by this process, kept for the artifact the run ends with: reading 500 back
#: from the archive (a thread trip and a read each) was most of a batch's last half second.
RECENT_MAX = 2000
_RECENT: OrderedDict[str, bytes] = OrderedDict()  # by the preview's URI
_RECENT_LOCK = threading.Lock()


def recent_thumbnail(archive: Archive, sha256: str) -> str | None:
    """The preview as a `data:` URI if this process made it lately, without any I/O."""
    with _RECENT_LOCK:
        webp = _RECENT.get(archive.uri(thumb_rel(sha256)))
    return data_uri(webp) if webp is not None else None


def store_thumbnail(archive: Archive, sha256: str, source: bytes | str | Path) -> bytes:
    """Make and keep the preview of one image (written once; blocking: run it in a thread)."""
    webp = thumbnail_bytes(source)
    archive.put_bytes(webp, thumb_rel(sha256), overwrite=False)
    with _RECENT_LOCK:
        _RECENT[archive.uri(thumb_rel(sha256))] = webp
        while len(_RECENT) > RECENT_MAX:
            _RECENT.popitem(last=False)
    return webp


def load_thumbnail(archive: Archive, sha256: str, image_uri: str) -> str | None:
    """The preview as a `data:` URI, made from the archived image if it has none yet; None
    when the image itself is gone (blocking: run it in a thread)."""
    try:
        return data_uri(archive.read_bytes(thumb_rel(sha256)))
    except FileNotFoundError:
        pass
    try:
        image = archive.read_bytes(image_uri)
    except FileNotFoundError:
        return None
    return data_uri(store_thumbnail(archive, sha256, image))
