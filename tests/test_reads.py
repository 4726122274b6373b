"""The one read rule (media/reads.py), as a table: each row is something a prompt file, an
input image or a mask could name, and what the rule says. Then the same rule where users meet
it: a batch's prompt file and an edit's inputs, refused before anything is paid."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import batch_generate, edit_image, estimate_cost
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.prompt_files import read_prompts
from gptimg_flows.media.reads import ALLOW_PRIVATE_ENV, ReadRules, read_bytes

CAP = 1000


@pytest.fixture(autouse=True)
def _no_private_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)


@pytest.fixture
def redirecting_server() -> Iterator[str]:
    """127.0.0.1: `/ok` answers bytes, `/hop` redirects to the cloud metadata address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"fine")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@dataclass
class Row:
    source: str
    refusal: str | None  # a regex the InvalidRequest must match; None: the read succeeds
    rules: ReadRules = field(default_factory=ReadRules)


def _table(tmp: Path, server: str) -> dict[str, Row]:
    (tmp / "root").mkdir()
    inside = tmp / "root" / "ok.txt"
    inside.write_text("a prompt\n")
    outside = tmp / "outside.txt"
    outside.write_text("secret\n")
    (tmp / "root" / "link.txt").symlink_to(outside)
    big = tmp / "big.txt"
    big.write_bytes(b"x" * (CAP + 1))
    fifo = tmp / "pipe.txt"
    os.mkfifo(fifo)
    rooted = ReadRules(roots=(str(tmp / "root"),))
    trusted = ReadRules(trusted_hosts=frozenset({"127.0.0.1"}))
    return {
        "a plain file": Row(str(inside), None),
        "the kernel's tree": Row("/proc/self/environ", "is a system file"),
        "an endless device": Row("/dev/zero", "is a system file"),
        "a FIFO (would block a worker thread)": Row(str(fifo), "not a regular file"),
        "a directory": Row(str(tmp), "is a directory"),
        "over the cap": Row(str(big), f"larger than the {CAP:,}-byte cap"),
        "a missing file": Row(str(tmp / "nope.txt"), "no such file"),
        "a file:// URL": Row(f"file://{inside}", "file:// URLs are not fetched"),
        "a chained local URL": Row(f"simplecache::file://{inside}", "chained URLs"),
        "a chained http URL": Row(f"blockcache::{server}/ok", "chained URLs"),
        "a protocol not listed": Row("ftp://example.com/p.txt", "ftp:// is not read"),
        "under the roots": Row(str(inside), None, rooted),
        "outside the roots": Row(str(outside), "outside the folders this run may read", rooted),
        "a link out of the roots": Row(
            str(tmp / "root" / "link.txt"), "outside the folders this run may read", rooted
        ),
        "loopback http": Row(f"{server}/ok", r"private or reserved network \(127\.0\.0\.1\)"),
        "cloud metadata": Row("http://169.254.169.254/latest/", "private or reserved network"),
        "a trusted host": Row(f"{server}/ok", None, trusted),
        "a trusted host redirecting to metadata": Row(
            f"{server}/hop", r"private or reserved network \(169\.254\.169\.254\)", trusted
        ),
    }


CASES = [
    "a plain file",
    "the kernel's tree",
    "an endless device",
    "a FIFO (would block a worker thread)",
    "a directory",
    "over the cap",
    "a missing file",
    "a file:// URL",
    "a chained local URL",
    "a chained http URL",
    "a protocol not listed",
    "under the roots",
    "outside the roots",
    "a link out of the roots",
    "loopback http",
    "cloud metadata",
    "a trusted host",
    "a trusted host redirecting to metadata",
]


@pytest.mark.parametrize("case", CASES)
def test_the_read_rule(case: str, tmp_path: Path, redirecting_server: str) -> None:
    row = _table(tmp_path, redirecting_server)[case]
    if row.refusal is None:
        data, _ = read_bytes(row.source, "prompts", row.rules, CAP)
        assert data
        return
    with pytest.raises(InvalidRequest, match=row.refusal) as caught:
        read_bytes(row.source, "prompts", row.rules, CAP)
    assert caught.value.field == "prompts"
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("/etc/passwd", "a prompt file's name ends with"),
        ("/proc/self/environ", "a prompt file's name ends with"),
        ("prompts.dat", "a prompt file's name ends with"),
    ],
)
def test_a_prompt_file_names_its_format(name: str, refusal: str) -> None:
    with pytest.raises(InvalidRequest, match=refusal):
        read_prompts(name)


def test_a_prompt_file_that_is_not_text_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xff\xfe secret-ish bytes \x00")
    with pytest.raises(InvalidRequest, match="not UTF-8 text") as caught:
        read_prompts(str(path))
    assert "secret" not in str(caught.value)


@pytest.mark.usefixtures("prefect_server")
async def test_a_batch_refuses_a_system_file_before_paying(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    for source in ("/proc/self/environ", "/dev/zero", "/etc/hostname"):
        with pytest.raises(InvalidRequest, match="prompt file's name ends with"):
            await batch_generate(
                prompts=source, provider=provider_block("scenario"), archive=str(archive_dir)
            )
    with pytest.raises(InvalidRequest, match="chained URLs"):
        await estimate_cost(prompts="simplecache::file:///etc/hosts.txt", provider="offline")
    assert emulator.ledger()["submissions"] == []


@pytest.mark.usefixtures("prefect_server")
async def test_chained_urls_no_longer_pass_the_input_checks(
    provider_block: Any, emulator: Any, archive_dir: Path, tmp_path: Path
) -> None:
    """The finding: `<cache>::http://127.0.0.1/…` and `<cache>::file://…` passed as inputs
    because the scheme checked was not the one fetched."""
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    for source in (f"simplecache::file://{image}", "blockcache::http://127.0.0.1:9/x.png"):
        with pytest.raises(InvalidRequest, match="chained URLs"):
            await edit_image(
                image=source,
                prompt="x",
                provider=provider_block("scenario"),
                archive=str(archive_dir),
            )
        with pytest.raises(InvalidRequest, match="chained URLs"):
            await edit_image(
                image=str(image),
                mask=source,
                prompt="x",
                provider=provider_block("openai"),
                archive=str(archive_dir),
            )
    assert emulator.ledger()["submissions"] == []


# -- what a provider names ---------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (no pixel data: nothing needs decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


async def _download(url: str, answer: Any, **kwargs: Any) -> Any:
    import httpx

    from gptimg_flows.media.download import download
    from gptimg_flows.models import OutputRef

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        return await download(client, OutputRef(index=0, url=url), **kwargs)


async def test_an_output_url_on_an_internal_address_is_not_fetched() -> None:
    from gptimg_flows.errors import InvalidOutput

    asked: list[str] = []

    def answer(request: Any) -> Any:
        import httpx

        asked.append(str(request.url))
        return httpx.Response(200, content=b"secret")

    trusted = ReadRules(trusted_hosts=frozenset({"cdn.example"}))
    with pytest.raises(InvalidOutput, match=r"private or reserved network \(169\.254"):
        await _download("http://169.254.169.254/latest/meta-data/", answer, rules=trusted)
    assert asked == []


async def test_a_redirect_to_an_internal_address_is_not_followed() -> None:
    import httpx

    from gptimg_flows.errors import InvalidOutput

    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.host == "cdn.example":
            return httpx.Response(302, headers={"location": "http://10.1.2.3/admin"})
        return httpx.Response(200, content=b"secret")

    trusted = ReadRules(trusted_hosts=frozenset({"cdn.example"}))
    with pytest.raises(InvalidOutput, match=r"private or reserved network \(10\.1\.2\.3\)"):
        await _download("https://cdn.example/out.png", answer, rules=trusted)
    assert asked == ["https://cdn.example/out.png"]


async def test_a_non_image_output_is_refused_without_quoting_it() -> None:
    import httpx

    from gptimg_flows.errors import InvalidOutput

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"sk-live-SECRET and more", headers={})

    trusted = ReadRules(trusted_hosts=frozenset({"cdn.example"}))
    with pytest.raises(InvalidOutput) as caught:
        await _download("https://cdn.example/out.png", answer, rules=trusted)
    assert "SECRET" not in str(caught.value) and "sk-" not in str(caught.value)


async def test_non_http_outputs_are_read_only_from_the_staging_area(tmp_path: Path) -> None:
    from gptimg_flows.archive.store import Archive
    from gptimg_flows.errors import InvalidOutput

    archive = Archive(str(tmp_path / "archive"))
    elsewhere = tmp_path / "someone-elses.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(elsewhere)
    staging = archive.path("_staging")
    inside_by_dots = f"{staging}/key/../../../someone-elses.png"
    for url in (str(elsewhere), inside_by_dots, "memory://x/_staging/a.png"):
        with pytest.raises(InvalidOutput, match="outside the archive's staging area"):
            await _download(url, None, fs=archive.fs, staging=staging)
    fifo = Path(staging, "key", "0.png")
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    with pytest.raises(InvalidOutput, match="not a regular file"):
        await _download(str(fifo), None, fs=archive.fs, staging=staging)


@pytest.mark.parametrize("where", ["an input", "an output"])
async def test_an_image_over_the_pixel_limit_is_refused_from_its_header(
    where: str, tmp_path: Path
) -> None:
    """A 14000x14000 RGBA PNG is small on disk but 784 MB decoded: refused before decoding."""
    import httpx

    from gptimg_flows.errors import InvalidOutput
    from gptimg_flows.media.inputs import load_image

    data = _png_header(14000, 14000)
    if where == "an input":
        path = tmp_path / "huge.png"
        path.write_bytes(data)
        with pytest.raises(InvalidRequest, match="over the 100,000,000-pixel limit"):
            await load_image(str(path), "images[0]")
        return

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data, headers={"content-type": "image/png"})

    trusted = ReadRules(trusted_hosts=frozenset({"cdn.example"}))
    with pytest.raises(InvalidOutput, match="over the 100,000,000-pixel limit"):
        await _download("https://cdn.example/out.png", answer, rules=trusted)
