"""Where images are kept: any fsspec URL, written once, atomically, content-addressed.

What lives where under the base path is layout.py's.

Object stores make a PUT visible only when complete; on a local disk we write a hidden temp
file and rename it, so no reader ever sees half an image. Calls are blocking (fsspec's sync API)
and are run in worker threads by the async callers.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from gptimg_flows.archive import layout
from gptimg_flows.errors import DamagedRecord

DEFAULT_ARCHIVE_ENV = "GPTIMG_ARCHIVE"
S3_PART_BYTES = 5 * 2**20  # S3's smallest multipart part
#: Image uploads at once per process: each holds a part (and the client's copies of it) in
#: memory, so this bounds memory whatever the batch's concurrency.
_UPLOADS = threading.BoundedSemaphore(3)
DEFAULT_ARCHIVE_DIR = "gptimg-archive"
#: How long a presigned link in an artifact works: 7 days, the longest S3 SigV4 allows.
LINK_EXPIRY_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Link:
    """An http(s) URL a browser can open; `expires_at` is None for a permanent one."""

    url: str
    expires_at: datetime | None = None


#: Temporary files older than this were left by a write that was killed.
STALE_SECONDS = 24 * 3600
_SWEPT: set[str] = set()


def sweep_old_files(root: str, matches: Any, older_than: float = STALE_SECONDS) -> int:
    """Delete files under `root` whose name `matches` and whose last change is older than
    `older_than` seconds (what a killed write leaves behind)."""
    cutoff = time.time() - older_than
    removed = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if not matches(name):
                continue
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
    return removed


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def default_basepath() -> str:
    """`$GPTIMG_ARCHIVE`, else ./gptimg-archive (absolute, so workers agree on it)."""
    return os.environ.get(DEFAULT_ARCHIVE_ENV) or str(Path(DEFAULT_ARCHIVE_DIR).resolve())


class Archive:
    """An fsspec location holding images, sidecars and job records."""

    def __init__(
        self,
        basepath: str | None = None,
        storage_options: dict[str, Any] | None = None,
        *,
        public_base_url: str | None = None,
        link_expiry_seconds: int = LINK_EXPIRY_SECONDS,
        read_options: dict[str, dict[str, Any]] | None = None,
    ):
        self.basepath = (basepath or default_basepath()).rstrip("/")
        #: protocol → fsspec options for files read from other stores (prompt files, inputs).
        self.read_options = {k: dict(v) for k, v in (read_options or {}).items()}
        #: Came from configuration (a saved block, the worker's default), not from a folder or
        #: options a run's parameter named: only then does a deployment's run read user-named
        #: files with it (its folder as a read root, its options). Set by blocks/resolve.py.
        self.configured = False
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.link_expiry_seconds = link_expiry_seconds
        self.storage_options = dict(storage_options or {})
        fs, root = url_to_fs(self.basepath, **self.storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.local = protocol in ("file", "local")
        self.protocol: str = protocol

    def __repr__(self) -> str:  # storage_options may hold credentials
        return f"Archive({self.basepath!r})"

    # -- paths ---------------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if not self.local else str(Path(self.root, rel))

    def uri(self, rel: str) -> str:
        """A URI a user can open: a plain path for local archives, `proto://…` otherwise."""
        return self.path(rel) if self.local else f"{self.protocol}://{self.path(rel)}"

    image_rel = staticmethod(layout.image_rel)
    sidecar_rel = staticmethod(layout.sidecar_rel)

    # -- writes ------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def put_file(self, local_path: str, rel: str, mime: str | None = None) -> str:
        """Upload a local file under `rel` atomically; content-addressed names are written once.

        On S3 the upload goes in 5 MiB parts one at a time: s3fs would otherwise read a file
        of up to 100 MB into memory in one piece, per concurrent upload.
        """
        target = self.path(rel)
        if self.fs.exists(target):
            return self.uri(rel)
        options: dict[str, Any] = {}
        if self.protocol in ("s3", "s3a"):
            options = {"chunksize": S3_PART_BYTES, "max_concurrency": 1}
            if mime:
                options["ContentType"] = mime
        with _UPLOADS:
            self._atomic(target, lambda tmp: self.fs.put_file(local_path, tmp, **options))
        return self.uri(rel)

    def put_bytes(self, data: bytes, rel: str, *, overwrite: bool = True) -> str:
        target = self.path(rel)
        if not overwrite and self.fs.exists(target):
            return self.uri(rel)
        self._atomic(target, lambda tmp: self.fs.pipe_file(tmp, data))
        return self.uri(rel)

    def _atomic(self, target: str, write: Any) -> None:
        parent = posixpath.dirname(target) if not self.local else str(Path(target).parent)
        self.fs.makedirs(parent, exist_ok=True)
        if not self.local:
            write(target)  # an object PUT is all-or-nothing
            return
        tmp = str(Path(parent, f".{Path(target).name}.{uuid.uuid4().hex}.tmp"))
        try:
            write(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_json(self, rel: str, value: Any, *, overwrite: bool = True) -> str:
        data = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        return self.put_bytes(data, rel, overwrite=overwrite)

    def sidecars(self) -> Iterator[dict[str, Any]]:
        """Every image sidecar in the archive (inputs carry none); unreadable ones are passed
        over (the images are what counts)."""
        for path in sorted(self.fs.glob(self.path(layout.SIDECARS))):
            with self.fs.open(path, "rb") as fh:
                try:
                    record = json.loads(fh.read())
                except ValueError:
                    continue
            if isinstance(record, dict) and "sha256" in record:
                yield record

    def sweep_stale(self) -> int:
        """Remove what killed writes left in a local archive (hidden `.tmp` files a day old),
        once per process: a write in flight is never that old. Returns how many went."""
        if not self.local or self.root in _SWEPT:
            return 0
        _SWEPT.add(self.root)
        return sweep_old_files(
            self.root, lambda name: name.startswith(".") and name.endswith(".tmp")
        )

    def create_json(self, rel: str, value: Any) -> bool:
        """Write `rel` only if nothing is there, as one step no other writer can split: False
        when it exists. Two workers claiming one request both try; exactly one wins.

        Local disk: the whole file is written aside and hard-linked into place (a link fails
        if the name exists, and a reader never sees half of it). S3: a conditional PUT
        (`If-None-Match: *`). Other stores: fsspec's exclusive mode, where the store has one.
        """
        data = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        target = self.path(rel)
        parent = posixpath.dirname(target) if not self.local else str(Path(target).parent)
        self.fs.makedirs(parent, exist_ok=True)
        try:
            if self.local:
                tmp = Path(parent, f".{Path(target).name}.{uuid.uuid4().hex}.tmp")
                try:
                    tmp.write_bytes(data)
                    os.link(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                self.fs.pipe_file(target, data, mode="create")
        except FileExistsError:
            return False
        return True

    def read_json(self, rel: str) -> Any | None:
        """The record at `rel`, None if there is none; a damaged one is a DamagedRecord naming
        the file and its fix (never a bare JSONDecodeError, never the bytes read)."""
        try:
            with self.fs.open(self.path(rel), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            where = (
                f" ({exc.msg} at byte {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
            )
            raise DamagedRecord(
                f"{self.uri(rel)} is not readable JSON{where}. {layout.record_fix(rel)}"
            ) from None

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel), recursive=True)

    def read_bytes(self, uri_or_rel: str) -> bytes:
        path = uri_or_rel if self._is_absolute(uri_or_rel) else self.path(uri_or_rel)
        with self.fs.open(path, "rb") as fh:
            data: bytes = fh.read()
        return data

    def _is_absolute(self, value: str) -> bool:
        return "://" in value or value.startswith(self.root)

    def rel_of(self, uri: str) -> str:
        """`uri` (as `uri()` makes it) relative to the base path."""
        path = uri.split("://", 1)[1] if "://" in uri else uri
        prefix = self.root + ("/" if not self.local else os.sep)
        return path[len(prefix) :].replace(os.sep, "/") if path.startswith(prefix) else path

    # -- URLs for providers that only take URLs, and for people ----------------------------

    def link(self, uri: str) -> Link | None:
        """A URL a browser can open for an archived object: under `public_base_url` (permanent),
        else a presigned one where the store can sign (S3), else None (a local folder)."""
        rel = self.rel_of(uri)
        if self.public_base_url:
            return Link(f"{self.public_base_url}/{rel}")
        if self.local:
            return None
        try:
            url = self.sign(rel, self.link_expiry_seconds)
        except NotImplementedError:
            return None
        expires = datetime.now(UTC) + timedelta(seconds=self.link_expiry_seconds)
        return Link(url, expires.replace(microsecond=0))

    def sign(self, rel: str, expires_seconds: int = 3600) -> str:
        """A time-limited http(s) URL for an archived object (S3 presigned URL, …)."""
        try:
            url: str = self.fs.sign(self.path(rel), expiration=expires_seconds)
        except NotImplementedError:
            raise NotImplementedError(
                f"a {self.protocol} archive cannot hand out URLs; use an s3:// archive for "
                "providers that take input images only as URLs"
            ) from None
        return url
