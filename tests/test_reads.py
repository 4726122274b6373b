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
