"""What the project may read: the one rule for every prompt file, input image and mask a user
names, and every output URL a provider names. No Prefect here; the caller says which rules
apply (`ReadRules`), so a deployment's run can be held to narrower ones than a user's shell.

- **Local paths** must be regular files (never devices, FIFOs, directories, `/proc`, `/sys` or
  `/dev`), within a size cap; with `roots` set (a deployment's run), only under those roots.
- **Remote stores** (`s3://`, `gs://`, …): only the listed protocols, never chained URLs
  (`a::b://…`, whose outer scheme is not what is fetched), opened with the storage options the
  caller gives for that protocol (the archive's). Another store is read anonymously (public
  objects only) unless `GPTIMG_AMBIENT_STORE_CREDENTIALS=1` says to use its own credential
  chain: never ambient keys by surprise.
- **http(s)**: every hop (redirects are followed here, by hand) must resolve to public
  addresses, unless its host is one the caller trusts (the provider's own base URL) or
  `GPTIMG_ALLOW_PRIVATE_URLS=1` is set (local test servers).

A refusal is `InvalidRequest` naming the input and the rule, and never quotes bytes it read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import fsspec
import httpx

from gptimg_flows.errors import InvalidRequest

ALLOW_PRIVATE_ENV = "GPTIMG_ALLOW_PRIVATE_URLS"
#: Where a deployment's run may read local files, besides a configured archive's folder
#: (os.pathsep-separated).
READ_ROOTS_ENV = "GPTIMG_READ_ROOTS"
#: Stores read through fsspec; anything else with a scheme is refused.
REMOTE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
#: Never read, whatever the roots say: the kernel's and the devices' trees.
SYSTEM_TREES = ("/proc", "/sys", "/dev")
#: Redirects followed for one http read.
MAX_REDIRECTS = 5


#: Opt-in: read stores other than the archive's with their own credential chain.
AMBIENT_CREDENTIALS_ENV = "GPTIMG_AMBIENT_STORE_CREDENTIALS"
#: How each store is read with no credentials at all (public objects only).
ANONYMOUS: dict[str, dict[str, Any]] = {
    "s3": {"anon": True},
    "s3a": {"anon": True},
    "gs": {"token": "anon"},
    "gcs": {"token": "anon"},
    "az": {"anon": True},
    "abfs": {"anon": True},
    "abfss": {"anon": True},
}


def ambient_credentials_allowed() -> bool:
    """Stores other than the archive's are read anonymously unless this is set on purpose."""
    return os.environ.get(AMBIENT_CREDENTIALS_ENV, "").lower() in ("1", "true", "yes")


def private_urls_allowed() -> bool:
    """Tests and local proxies may opt in to loopback/private URLs; production should not."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "").lower() in ("1", "true", "yes")


def roots_from_env() -> tuple[str, ...]:
    """`GPTIMG_READ_ROOTS`: the folders a deployment's run may read local files from."""
    raw = os.environ.get(READ_ROOTS_ENV, "")
    return tuple(os.path.realpath(p) for p in raw.split(os.pathsep) if p.strip())


@dataclass(frozen=True)
class ReadRules:
    """What one run may read. The defaults are a user's own process: any local regular file,
    public http(s) hosts, remote stores with the options given."""

    #: None: any local file; else only files under these folders (a deployment's run).
    roots: tuple[str, ...] | None = None
    #: http(s) hosts trusted although private (the provider's own base URL's host).
    trusted_hosts: frozenset[str] = frozenset()
    #: protocol → fsspec options (the archive's store is read with the archive's options).
    storage_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Says, in refusals for want of credentials, whose options were used.
    options_from: str = "the archive"

    def options_for(self, protocol: str) -> dict[str, Any]:
        return dict(self.storage_options.get(protocol, {}))


def kind_of(source: str, what: str) -> str:
    """ "http", "local" or a remote store's protocol, or a refusal for what is never read."""
    text = source.strip()
    if "::" in text:
        raise InvalidRequest(
            f"{what}: chained URLs ({text.split('::')[0]}::…) are not read; give the URL of "
            "the file itself",
            field=what,
        )
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file":
        raise InvalidRequest(
            f"{what}: file:// URLs are not fetched; give a plain local path instead", field=what
        )
    if len(scheme) > 1:  # "C:" is a drive letter
        if scheme not in REMOTE_PROTOCOLS:
            raise InvalidRequest(
                f"{what}: {scheme}:// is not read; use a local path, http(s) or one of "
                f"{', '.join(sorted(REMOTE_PROTOCOLS))}",
                field=what,
            )
        return scheme
    return "local"


def read_bytes(source: str, what: str, rules: ReadRules, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of `source` under `rules` (blocking), and the URL it was read from at last
    (after redirects, for http)."""
    kind = kind_of(source, what)
    text = source.strip()
    if kind == "http":
        return read_http(text, what, rules, max_bytes)
    if kind == "local":
        return read_local(text, what, rules, max_bytes), text
    return read_remote(text, kind, what, rules, max_bytes), text


def check_local(path: str, what: str, rules: ReadRules) -> str:
    """The real path of a local file that may be read, or a refusal naming the rule."""
    real = os.path.realpath(os.path.expanduser(path))
    if any(real == tree or real.startswith(tree + os.sep) for tree in SYSTEM_TREES):
        raise InvalidRequest(f"{what}: {path} is a system file, not read", field=what)
    if rules.roots is not None and not any(_under(real, root) for root in rules.roots):
        allowed = ", ".join(rules.roots) or "none are set"
        raise InvalidRequest(
            f"{what}: {path} is outside the folders this run may read ({allowed}); a "
            f"deployment's run reads local files only under {READ_ROOTS_ENV} and its archive's "
            "folder when that is a saved ImageArchive block's or the worker's GPTIMG_ARCHIVE, "
            "never a folder a parameter names: move the file under one of those, or add its "
            f"folder to {READ_ROOTS_ENV} on the worker",
            field=what,
        )
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise InvalidRequest(f"{what}: no such file {path}", field=what) from None
    except OSError as exc:
        raise InvalidRequest(f"{what}: cannot read {path} ({exc.strerror})", field=what) from None
    if stat.S_ISDIR(mode):
        raise InvalidRequest(f"{what}: {path} is a directory, not a file", field=what)
    if not stat.S_ISREG(mode):
        raise InvalidRequest(
            f"{what}: {path} is not a regular file (a device, FIFO or socket is never read)",
            field=what,
        )
    return real


def read_local(path: str, what: str, rules: ReadRules, max_bytes: int) -> bytes:
    real = check_local(path, what, rules)
    # O_NONBLOCK: should the file be swapped for a FIFO after the check, open does not hang.
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InvalidRequest(f"{what}: cannot read {path} ({exc.strerror})", field=what) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InvalidRequest(f"{what}: {path} is not a regular file", field=what)
        data = fh.read(max_bytes + 1)
    return _capped(data, path, what, max_bytes)


def read_remote(url: str, protocol: str, what: str, rules: ReadRules, max_bytes: int) -> bytes:
    options = rules.options_for(protocol)
    anonymous = protocol not in rules.storage_options and not ambient_credentials_allowed()
    if anonymous:  # not the archive's store: its keys are not ours to guess
        options = dict(ANONYMOUS.get(protocol, {}))
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise InvalidRequest(
                f"{what}: {url} is larger than the {max_bytes:,}-byte cap", field=what
            )
        with fs.open(path, "rb") as fh:
            data: bytes = fh.read(max_bytes + 1)
    except InvalidRequest:
        raise
    except FileNotFoundError:
        raise InvalidRequest(f"{what}: no such file {url}", field=what) from None
    except IsADirectoryError:
        raise InvalidRequest(f"{what}: {url} is a directory, not a file", field=what) from None
    except ImportError as exc:
        raise InvalidRequest(f"{what}: cannot read {url} ({exc})", field=what) from None
    except Exception as exc:  # botocore & co: name the URL and whose options were used
        name = type(exc).__name__
        if anonymous:
            raise InvalidRequest(
                f"{what}: {url} could not be read ({name}). It is not on the archive's store, "
                "so it was read without credentials (no storage options: public objects "
                "only). Keep it on the archive's store (read with the archive's storage "
                f"options), or set {AMBIENT_CREDENTIALS_ENV}=1 on the worker to read other "
                "stores with their own credential chain (environment, profile)",
                field=what,
            ) from None
        used = f"{rules.options_from}'s storage options" if options else "no storage options"
        if "Credentials" in name or "AccessDenied" in str(exc) or isinstance(exc, PermissionError):
            raise InvalidRequest(
                f"{what}: {url} could not be read for want of credentials ({name}); it was "
                f"opened with {used}. Put the store's keys (and endpoint_url) in the "
                "ImageArchive block's storage options, or keep the file on the archive's store",
                field=what,
            ) from None
        raise InvalidRequest(
            f"{what}: cannot read {url} ({name}; opened with {used})", field=what
        ) from None
    return _capped(data, url, what, max_bytes)


def check_host(url: str, what: str, rules: ReadRules) -> None:
    """Refuse a URL whose host resolves into loopback, private, link-local (cloud metadata)
    or reserved networks, unless the host is trusted or the opt-in is set."""
    host = _host_to_check(url, what, rules)
    if host is None:
        return
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise InvalidRequest(f"{what}: cannot resolve host {host!r}", field=what) from None
    _refuse_private(url, what, [str(info[4][0]) for info in infos])


async def check_host_async(url: str, what: str, rules: ReadRules) -> None:
    """`check_host` without blocking the event loop (provider outputs, one per hop)."""
    host = _host_to_check(url, what, rules)
    if host is None:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except socket.gaierror:
        raise InvalidRequest(f"{what}: cannot resolve host {host!r}", field=what) from None
    _refuse_private(url, what, [str(info[4][0]) for info in infos])


def _host_to_check(url: str, what: str, rules: ReadRules) -> str | None:
    host = urlsplit(url).hostname
    if not host:
        raise InvalidRequest(f"{what}: URL {url!r} has no host", field=what)
    if host in rules.trusted_hosts or private_urls_allowed():
        return None
    return host


def _refuse_private(url: str, what: str, addresses: list[str]) -> None:
    for address in addresses:
        addr = ipaddress.ip_address(address)
        if not addr.is_global:
            raise InvalidRequest(
                f"{what}: {url!r} points into a private or reserved network ({addr}); set "
                f"{ALLOW_PRIVATE_ENV}=1 only for local test servers",
                field=what,
            )


def read_http(url: str, what: str, rules: ReadRules, max_bytes: int) -> tuple[bytes, str]:
    """GET with redirects followed by hand, each hop's host checked before it is asked."""
    current = url
    with httpx.Client(timeout=60, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_host(current, what, rules)
            with client.stream("GET", current) as response:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    if kind_of(current, what) != "http":
                        raise InvalidRequest(
                            f"{what}: {url} redirects to a non-http URL", field=what
                        )
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"{what}: {current} answered HTTP {response.status_code}", field=what
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidRequest(
                            f"{what}: {url} is larger than the {max_bytes:,}-byte cap", field=what
                        )
                    chunks.append(chunk)
                return b"".join(chunks), current
    raise InvalidRequest(f"{what}: {url} redirects more than {MAX_REDIRECTS} times", field=what)


def trusted_host_of(base_url: str | None) -> frozenset[str]:
    """The provider's own host, trusted for its outputs when it is itself private (a test
    server or an internal proxy): what the provider says is no further than where it is."""
    host = urlsplit(base_url or "").hostname
    return frozenset({host}) if host else frozenset()


def _capped(data: bytes, where: str, what: str, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise InvalidRequest(
            f"{what}: {where} is larger than the {max_bytes:,}-byte cap", field=what
        )
    return data


def _under(path: str, root: str) -> bool:
    try:
        return Path(path).is_relative_to(root)
    except ValueError:
        return False
