"""Loading input images (paths, fsspec URLs, http URLs, bytes) and preparing masks.

Everything here runs before a submit, so a bad input costs nothing: a missing file, a file that
is not an image, one too big, a URL pointing into a private network, or a mask that does not fit
its image all become `InvalidRequest` naming the input.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import httpx
from PIL import Image

from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.sniff import sniff
from gptimg_flows.models import InputImage

log = logging.getLogger("gptimg_flows.media.inputs")

#: Default cap on one input image (OpenAI takes up to 50 MB per image; masks under 4 MB).
MAX_INPUT_BYTES = 50 * 1024 * 1024
ALLOW_PRIVATE_ENV = "GPTIMG_ALLOW_PRIVATE_URLS"


def private_urls_allowed() -> bool:
    """Tests and local proxies may opt in to loopback/private URLs; production should not."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "").lower() in ("1", "true", "yes")


def _describe(source: str | bytes) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else source


async def check_public_url(url: str, field: str) -> None:
    """Refuse URLs that resolve into loopback, private, link-local or reserved networks."""
    host = urlsplit(url).hostname
    if not host:
        raise InvalidRequest(f"{field}: URL {url!r} has no host", field=field)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except socket.gaierror:
        raise InvalidRequest(f"{field}: cannot resolve host {host!r}", field=field) from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise InvalidRequest(
                f"{field}: {url!r} points into a private or reserved network ({addr}); "
                f"set {ALLOW_PRIVATE_ENV}=1 only for local test servers",
                field=field,
            )


async def _read_http(url: str, field: str, max_bytes: int) -> bytes:
    async with (
        httpx.AsyncClient(timeout=60, follow_redirects=False) as client,
        client.stream("GET", url) as response,
    ):
        if response.status_code != 200:
            raise InvalidRequest(
                f"{field}: {url} answered HTTP {response.status_code}", field=field
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes(65536):
            size += len(chunk)
            if size > max_bytes:
                raise InvalidRequest(
                    f"{field}: {url} is larger than the {max_bytes:,}-byte cap", field=field
                )
            chunks.append(chunk)
    return b"".join(chunks)


def _read_fsspec(
    source: str, field: str, max_bytes: int, options: Mapping[str, Any] | None = None
) -> bytes:
    try:
        with fsspec.open(source, "rb", **dict(options or {})) as fh:
            data: bytes = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise InvalidRequest(f"{field}: no such file {source}", field=field) from None
    except IsADirectoryError:
        raise InvalidRequest(f"{field}: {source} is a directory", field=field) from None
    if len(data) > max_bytes:
        raise InvalidRequest(
            f"{field}: {source} is larger than the {max_bytes:,}-byte cap", field=field
        )
    return data


async def read_source(
    source: str | bytes,
    field: str,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    storage_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[bytes, str | None]:
    """Bytes of an input and, for http(s) sources, the URL a provider could fetch itself.

    `storage_options` maps a protocol (`s3`) to the fsspec options to read it with: inputs
    that live in the archive's store are read with the archive's endpoint and credentials.
    """
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise InvalidRequest(f"{field}: {len(source):,} bytes exceeds the cap", field=field)
        return source, None
    text = source.strip()
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        if not private_urls_allowed():
            await check_public_url(text, field)
        return await _read_http(text, field, max_bytes), text
    if scheme == "file":
        raise InvalidRequest(
            f"{field}: file:// URLs are not fetched; give a plain local path instead", field=field
        )
    if scheme and len(scheme) > 1:  # s3://, gs://, memory://, … ("C:" is a drive letter)
        options = (storage_options or {}).get(scheme)
        return await asyncio.to_thread(_read_fsspec, text, field, max_bytes, options), None
    path = os.path.expanduser(text)
    return await asyncio.to_thread(_read_fsspec, path, field, max_bytes), None


async def load_image(
    source: str | bytes,
    field: str,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    storage_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> InputImage:
    """Load and identify one input image."""
    data, url = await read_source(
        source, field, max_bytes=max_bytes, storage_options=storage_options
    )
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
