"""Streamed downloads of generated images into local files, checked before they are kept.

Images stream to disk in chunks (hashing as they go), so memory stays flat however large the
image; the result is refused unless it is whole and really the image type it claims to be.
Output URLs are fetched with a bare client: credentials never go to a CDN.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin

import fsspec
import httpx
from pydantic import BaseModel, ConfigDict

from gptimg_flows.errors import (
    InvalidOutput,
    InvalidRequest,
    OutputExpired,
    RateLimited,
    ServerError,
    TransportError,
)
from gptimg_flows.media.gate import CLIENT_LIMITS, gate_of
from gptimg_flows.media.headers import parse_retry_after
from gptimg_flows.media.reads import MAX_REDIRECTS, ReadRules, check_host_async
from gptimg_flows.media.sniff import sniff_file
from gptimg_flows.models import OutputRef

MAX_OUTPUT_BYTES = 200 * 1024 * 1024
CHUNK = 256 * 1024


class DownloadedImage(BaseModel):
    """A verified image in a local spool file, ready to archive."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    mime: str
    width: int
    height: int
    size_bytes: int
    index: int
    seed: str | None = None


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def shared_client() -> httpx.AsyncClient:
    """One bare client per event loop for output downloads.

    Building a client builds an SSL context (tens of ms of CPU on the event loop), so a client
    per job stalls every other job in a large batch. It carries no credentials.
    """
    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None or client.is_closed:
        client = _CLIENTS[loop] = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=CLIENT_LIMITS,
            follow_redirects=False,  # each hop is checked by hand (`_followed`)
        )
    return client


def spool_dir() -> Path:
    """Where downloads stream to; the `.part` files a killed process left there a day ago or
    more are removed the first time a process uses it."""
    path = Path(os.environ.get("GPTIMG_SPOOL", Path(tempfile.gettempdir()) / "gptimg-spool"))
    path.mkdir(parents=True, exist_ok=True)
    if str(path) not in _SWEPT_SPOOLS:
        _SWEPT_SPOOLS.add(str(path))
        _sweep_parts(path)
    return path


_SWEPT_SPOOLS: set[str] = set()
#: A spool file untouched this long was left by a killed download.
STALE_PART_SECONDS = 24 * 3600


def _sweep_parts(path: Path) -> None:
    cutoff = time.time() - STALE_PART_SECONDS
    for part in path.glob("dl-*.part"):
        with contextlib.suppress(OSError):
            if part.lstat().st_mtime < cutoff:
                part.unlink()


def _finish(tmp: Path, digest: str, size: int, ref: OutputRef, where: str) -> DownloadedImage:
    try:
        info = sniff_file(tmp)
    except ValueError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidOutput(f"output {ref.index} from {where} is {exc}") from None
    if ref.mime and ref.mime.startswith("image/") and ref.mime != info.mime:
        tmp.unlink(missing_ok=True)
        raise InvalidOutput(f"output {ref.index} claims {ref.mime} but is {info.mime}")
    return DownloadedImage(
        path=str(tmp),
        sha256=digest,
        mime=info.mime,
        width=info.width,
        height=info.height,
        size_bytes=size,
        index=ref.index,
        seed=ref.seed,
    )


def _new_spool_file() -> Path:
    fd, name = tempfile.mkstemp(prefix="dl-", suffix=".part", dir=spool_dir())
    os.close(fd)
    return Path(name)


async def save_inline(ref: OutputRef) -> DownloadedImage:
    """Inline bytes (OpenAI's b64_json, offline drawings) → a verified spool file."""
    assert ref.data is not None
    data = ref.data
    tmp = _new_spool_file()
    await asyncio.to_thread(tmp.write_bytes, data)
    digest = hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(_finish, tmp, digest, tmp.stat().st_size, ref, "inline data")


async def download(
    client: httpx.AsyncClient,
    ref: OutputRef,
    *,
    fs: fsspec.AbstractFileSystem | None = None,
    staging: str | None = None,
    rules: ReadRules | None = None,
    max_bytes: int = MAX_OUTPUT_BYTES,
) -> DownloadedImage:
    """Stream one output URL to a spool file; typed errors say what to do next.

    Non-http URLs are objects staged in our archive, read through its filesystem `fs`, and only
    from under `staging` (the archive's `_staging/`). http(s) redirects are followed by hand,
    each hop's host checked by the read rule (`rules`: the provider's own host is trusted).
    """
    assert ref.url is not None
    if not ref.url.startswith(("http://", "https://")):
        if fs is None or staging is None:
            raise InvalidOutput(f"output {ref.index}: no archive staging area to read it from")
        path = _staged_path(fs, ref, staging)
        return await asyncio.to_thread(_copy_fsspec, fs, ref, path, max_bytes)
    tmp = _new_spool_file()
    digest = hashlib.sha256()
    size = 0
    try:
        async with gate_of(client).slot(), _followed(client, ref, rules) as response:
            status = response.status_code
            if status in (401, 403, 404, 410):
                raise OutputExpired(f"output {ref.index} URL answered HTTP {status}")
            if status == 429:
                raise RateLimited(
                    f"output {ref.index} download answered HTTP 429",
                    retry_after=parse_retry_after(response.headers),
                )
            if status >= 500:
                raise ServerError(f"output {ref.index} download answered HTTP {status}")
            if status != 200:
                raise InvalidOutput(f"output {ref.index} download answered HTTP {status}")
            ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
                raise InvalidOutput(f"output {ref.index} URL serves {ctype}, not an image")
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise InvalidOutput(f"output {ref.index} is {declared:,} bytes, over the cap")
            with tmp.open("wb") as fh:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidOutput(
                            f"output {ref.index} exceeds the {max_bytes:,}-byte cap"
                        )
                    digest.update(chunk)
                    fh.write(chunk)
    except (httpx.TransportError, httpx.StreamError) as exc:
        tmp.unlink(missing_ok=True)
        raise TransportError(
            f"output {ref.index} download broke off after {size:,} bytes ({type(exc).__name__})"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return await asyncio.to_thread(_finish, tmp, digest.hexdigest(), size, ref, "its URL")


@contextlib.asynccontextmanager
async def _followed(
    client: httpx.AsyncClient, ref: OutputRef, rules: ReadRules | None
) -> AsyncIterator[httpx.Response]:
    """The response at the end of `ref.url`'s redirects, each hop checked before it is asked."""
    assert ref.url is not None
    url = ref.url
    what = f"output {ref.index}"
    for _ in range(MAX_REDIRECTS + 1):
        try:
            await check_host_async(url, what, rules or ReadRules())
        except InvalidRequest as exc:  # the provider named it: the output is refused
            raise InvalidOutput(exc.message) from None
        async with client.stream("GET", url) as response:
            if response.is_redirect and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                if not url.startswith(("http://", "https://")):
                    raise InvalidOutput(f"{what} URL redirects to a non-http URL")
                continue
            yield response
            return
    raise InvalidOutput(f"{what} URL redirects more than {MAX_REDIRECTS} times")


def _staged_path(fs: fsspec.AbstractFileSystem, ref: OutputRef, staging: str) -> str:
    """The staged file a non-http output names, if it is one: under `staging`, no `..`, a
    regular file (a FIFO would block a worker thread for ever)."""
    assert ref.url is not None
    path = fs._strip_protocol(ref.url)
    root = fs._strip_protocol(staging).rstrip("/") + "/"
    if ".." in path.split("/") or not path.startswith(root):
        raise InvalidOutput(
            f"output {ref.index} names a file outside the archive's staging area: not read"
        )
    return str(path)


def _copy_fsspec(
    fs: fsspec.AbstractFileSystem, ref: OutputRef, path: str, max_bytes: int
) -> DownloadedImage:
    """Outputs spooled into the archive's staging area are copied the same way."""
    tmp = _new_spool_file()
    digest = hashlib.sha256()
    size = 0
    try:
        if fs.info(path).get("type") != "file":
            raise InvalidOutput(f"staged output {ref.index} is not a regular file")
        with fs.open(path, "rb") as src, tmp.open("wb") as dst:
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidOutput(f"output {ref.index} exceeds the {max_bytes:,}-byte cap")
                digest.update(chunk)
                dst.write(chunk)
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        raise OutputExpired(f"staged output {ref.index} is gone") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _finish(tmp, digest.hexdigest(), size, ref, "staging")
