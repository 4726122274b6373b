"""Real image bytes for the emulator: drawn off the event loop, cached, optionally padded.

Outputs are described by an `OutputSpec` and drawn only when someone needs the bytes, so
polling stays cheap; padding to tens of megabytes is streamed, never held in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import io
import struct
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
from PIL import Image

from gptimg_flows.media import render
from gptimg_flows.media.sniff import EXTENSIONS, sniff

CHUNK = 64 * 1024
_ZEROS = bytes(CHUNK)
#: Private, ancillary, safe-to-copy PNG chunk type: decoders skip it, `verify()` checks its CRC.
PAD_CHUNK = b"emPd"
MAX_INPUT_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class OutputSpec:
    """Everything that decides one output's bytes (and so its cache key)."""

    prompt: str
    width: int
    height: int
    fmt: render.Format = "png"
    seed: int = 0
    transparent: bool = False
    quality: int | None = None
    base: str | None = None  # sha256 of the stored input image to edit
    mask: str | None = None  # sha256 of the stored mask

    @property
    def mime(self) -> str:
        return render.MIME[self.fmt]

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.mime]


@dataclass(frozen=True)
class StoredInput:
    """An input image the emulator received (upload, data URI, fetched URL)."""

    sha256: str
    data: bytes
    mime: str
    width: int
    height: int
    has_alpha: bool

    @property
    def ext(self) -> str:
        return EXTENSIONS.get(self.mime, "bin")


class InputStore:
    """Input images by content digest, so specs stay small and hashable."""

    def __init__(self) -> None:
        self._items: dict[str, StoredInput] = {}

    def get(self, sha: str) -> StoredInput | None:
        return self._items.get(sha)

    def clear(self) -> None:
        self._items.clear()

    async def add(self, data: bytes) -> StoredInput:
        """Check the bytes are an image and keep them; ValueError says why not."""
        item = await asyncio.to_thread(_identify, data)
        return self._items.setdefault(item.sha256, item)


def _identify(data: bytes) -> StoredInput:
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"image is {len(data):,} bytes, over {MAX_INPUT_BYTES:,}")
    info = sniff(data, verify=False)
    return StoredInput(
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
        mime=info.mime,
        width=info.width,
        height=info.height,
        has_alpha=info.has_alpha,
    )


# -- input references ---------------------------------------------------------------------


def decode_data_uri(value: str) -> bytes:
    """`data:image/png;base64,...` or bare base64 → bytes; ValueError otherwise."""
    payload = value
    if value.startswith("data:"):
        head, sep, payload = value.partition(",")
        if not sep or ";base64" not in head:
            raise ValueError("data URI is not base64")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64 image data") from None


async def fetch_url(client: httpx.AsyncClient, url: str) -> bytes:
    """GET an input image URL; ValueError says why it cannot be used."""
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise ValueError(f"could not fetch {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ValueError(f"fetching {url} answered HTTP {response.status_code}")
    return response.content


# -- padding ------------------------------------------------------------------------------


def pad_length(data: bytes, fmt: str, pad_to: int | None) -> int:
    """Bytes of zeros to put in a padding chunk (0: no chunk), so the file is ~`pad_to` long."""
    if not pad_to or fmt != "png":
        return 0
    return max(0, pad_to - len(data) - 12)


def padded_size(data: bytes, pad: int) -> int:
    return len(data) + (pad + 12 if pad else 0)


@functools.lru_cache(maxsize=16)
def _zero_crc(length: int) -> int:
    crc = zlib.crc32(PAD_CHUNK)
    full, rest = divmod(length, CHUNK)
    for _ in range(full):
        crc = zlib.crc32(_ZEROS, crc)
    return zlib.crc32(_ZEROS[:rest], crc)


def _pieces(data: bytes, pad: int, crc: int) -> Iterator[bytes]:
    """The file in chunks: everything before IEND, the padding chunk, then IEND."""
    head, tail = (data[:-12], data[-12:]) if pad else (data, b"")
    for i in range(0, len(head), CHUNK):
        yield head[i : i + CHUNK]
    if pad:
        yield struct.pack(">I", pad) + PAD_CHUNK
        full, rest = divmod(pad, CHUNK)
        for _ in range(full):
            yield _ZEROS
        if rest:
            yield _ZEROS[:rest]
        yield struct.pack(">I", crc) + tail


async def stream(data: bytes, pad: int, limit: int | None = None) -> AsyncIterator[bytes]:
    """Stream a (padded) file, stopping after `limit` bytes when given."""
    crc = await asyncio.to_thread(_zero_crc, pad) if pad else 0
    sent = 0
    for piece in _pieces(data, pad, crc):
        if limit is not None and sent + len(piece) >= limit:
            yield piece[: limit - sent]
            return
        sent += len(piece)
        yield piece


def padded_bytes(data: bytes, pad: int) -> bytes:
    """The padded file in memory (for inline answers: OpenAI's b64_json, Runware data URIs)."""
    if not pad:
        return data
    return b"".join(_pieces(data, pad, _zero_crc(pad)))


# -- rendering ----------------------------------------------------------------------------


def _stamp(data: bytes, fmt: str, text: str) -> bytes:
    """Make a template image unique without redrawing it: a PNG tEXt chunk or a JPEG comment."""
    if fmt == "png":
        body = b"tEXt" + b"Comment\x00" + text.encode("latin-1", "replace")
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:33] + chunk + data[33:]  # after the signature and IHDR
    comment = text.encode("latin-1", "replace")[:60000]
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


class Renderer:
    """Draws outputs in worker threads; an LRU cache (by spec) and in-flight sharing."""

    def __init__(self, inputs: InputStore, cache_bytes: int) -> None:
        self.inputs = inputs
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._size = 0
        self._pending: dict[tuple[object, ...], asyncio.Future[bytes]] = {}

    def clear(self) -> None:
        self._cache.clear()
        self._size = 0

    async def get(self, spec: OutputSpec, mode: str = "full") -> bytes:
        if mode == "stamp" and spec.base is None and spec.fmt != "webp":
            template = OutputSpec(
                "gptimg-flows emulator",
                spec.width,
                spec.height,
                spec.fmt,
                0,
                spec.transparent,
                spec.quality,
            )
            data = await self._cached(template)
            return _stamp(data, spec.fmt, f"seed={spec.seed} prompt={spec.prompt[:500]}")
        return await self._cached(spec)

    async def _cached(self, spec: OutputSpec) -> bytes:
        key: tuple[object, ...] = (spec,)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._draw_and_keep(key, spec))
            self._pending[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        # A waiter that gives up must not cancel the drawing others are waiting for.
        return await asyncio.shield(task)

    def _done(self, key: tuple[object, ...], task: asyncio.Future[bytes]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here; waiters re-raise it themselves

    async def _draw_and_keep(self, key: tuple[object, ...], spec: OutputSpec) -> bytes:
        data = await asyncio.to_thread(self._draw, spec)
        self._put(key, data)
        return data

    def _put(self, key: tuple[object, ...], data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        self._cache[key] = data
        self._size += len(data)
        while self._size > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._size -= len(old)

    def _draw(self, spec: OutputSpec) -> bytes:
        if spec.base is None:
            return render.render(
                spec.prompt,
                spec.width,
                spec.height,
                spec.fmt,
                spec.seed,
                spec.transparent,
                spec.quality,
            )
        base_item = self.inputs.get(spec.base)
        if base_item is None:
            raise LookupError("input image is gone (emulator was reset)")
        base: Image.Image = Image.open(io.BytesIO(base_item.data))
        base.load()
        mask: Image.Image | None = None
        if spec.mask is not None:
            mask_item = self.inputs.get(spec.mask)
            if mask_item is None:
                raise LookupError("mask image is gone (emulator was reset)")
            mask = Image.open(io.BytesIO(mask_item.data))
            mask.load()
        size = (spec.width, spec.height)
        if base.size != size:
            base = base.resize(size, Image.Resampling.BILINEAR)
            if mask is not None:
                mask = mask.convert("RGBA").resize(size, Image.Resampling.NEAREST)
        img = render.edit(base, spec.prompt, mask, spec.seed)
        return render.encode(img, spec.fmt, spec.quality)
