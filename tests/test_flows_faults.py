"""What goes wrong after a job is paid: expired URLs, bad downloads, deadlines, failed jobs.

Nothing already paid for may be lost, and nothing may be paid twice.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gptimg_flows import batch_generate, edit_image, generate_images
from gptimg_flows.errors import InvalidOutput, JobFailed, JobTimeout

from .support.prefect_api import artifacts

pytestmark = pytest.mark.usefixtures("prefect_server")


def _submissions(emulator: Any, provider: str) -> list[dict[str, Any]]:
    return [s for s in emulator.ledger()["submissions"] if s["provider"] == provider]


async def test_expired_output_url_is_re_resolved_not_repaid(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.force("url_expired", provider="scenario")
    images = await generate_images(
        prompt="an expiring cup",
        provider=provider_block("scenario"),
        archive=str(archive_dir),
        size="256x256",
    )
    assert Path(images[0].uri).exists()
    ledger = emulator.ledger()
    assert ledger["requests"]["scenario"]["resolve"] >= 2, ledger["requests"]["scenario"]
    assert len(_submissions(emulator, "scenario")) == 1


async def test_truncated_download_is_retried_and_paid_once(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.force("download_truncate", provider="runware")
    images = await generate_images(
        prompt="a long download",
        provider=provider_block("runware"),
        archive=str(archive_dir),
        size="256x256",
    )
    with Image.open(images[0].uri) as pic:
        pic.load()  # whole, not truncated
    assert len(_submissions(emulator, "runware")) == 1


async def test_an_html_page_instead_of_the_image_fails_clearly_and_a_rerun_does_not_repay(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    block = provider_block("skillsvideo")
    emulator.force("download_not_image", provider="skillsvideo")
    with pytest.raises(InvalidOutput, match=r"not an image|text/html"):
        await generate_images(
            prompt="a paid job", provider=block, archive=str(archive_dir), size="1:1"
        )
    assert not list(archive_dir.glob("images/*/*.png")), "nothing half-written is archived"
    images = await generate_images(
        prompt="a paid job", provider=block, archive=str(archive_dir), size="1:1"
    )
    assert Path(images[0].uri).exists()
    assert len(_submissions(emulator, "skillsvideo")) == 1, "the re-run polls the paid job"


async def test_polling_deadline_raises_job_timeout_and_cancels_where_possible(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=30.0)
    with pytest.raises(JobTimeout, match="after 2 s"):
        await generate_images(
            prompt="a slow job",
            provider=provider_block("scenario"),
            archive=str(archive_dir),
            size="256x256",
            timeout_seconds=2,
        )
    assert emulator.ledger()["requests"]["scenario"].get("cancel") == 1


async def test_failed_job_is_reported_and_refunded(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.force("job_fail", provider="gptimage2ai")
    with pytest.raises(JobFailed) as err:
        await generate_images(
            prompt="a doomed job",
            provider=provider_block("gptimage2ai"),
            archive=str(archive_dir),
            size="1:1",
        )
    assert err.value.job_id and err.value.job_id in str(err.value)
    assert not emulator.ledger()["credits"].get("gptimage2ai"), "failed jobs are refunded"


@pytest.fixture
def http_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A PNG served over HTTP on 127.0.0.1 (private URLs allowed for this test only)."""
    Image.new("RGB", (128, 128), (200, 30, 30)).save(tmp_path / "red.png")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GPTIMG_ALLOW_PRIVATE_URLS", "1")
    yield f"http://127.0.0.1:{server.server_address[1]}/red.png"
    server.shutdown()


async def test_edit_takes_an_http_url_input(http_image: str, archive_dir: Path) -> None:
    images = await edit_image(
        image=http_image, prompt="add a moon", provider="offline", archive=str(archive_dir)
    )
    assert (images[0].width, images[0].height) == (128, 128)
    assert len(images[0].parents) == 1 and Path(images[0].parents[0]).exists()


async def test_batch_reports_failed_jobs_in_result_and_artifact_with_progress(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.force("job_fail", provider="runware")
    result = await batch_generate(
        prompts=["p one", "p two", "p three"],
        provider=provider_block("runware"),
        archive=str(archive_dir),
        concurrency=1,
        size="256x256",
    )
    assert len(result.images) == 2 and len(result.failures) == 1
    failed = result.failures[0]
    assert failed.error_type == "JobFailed" and "p " in failed.prompt
    assert result.cost == {"usd": pytest.approx(0.08)}
    found = await artifacts()
    progress = [a for a in found if a["type"] == "progress"]
    assert progress and progress[0]["data"] == 100.0
    table = next(a for a in found if a["type"] == "markdown" and "Batch of 3" in a["data"])
    assert "### Failures" in table["data"] and "JobFailed" in table["data"]


async def test_a_blocks_retries_setting_decides_how_often_a_transient_error_is_retried(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    from gptimg_flows.errors import ServerError

    # A 503 is a fault to retry; a 429 is waited out inside the submit (test_rate_limits.py).
    emulator.force("submit_503", provider="runware", count=3)
    with pytest.raises(ServerError):
        await generate_images(
            prompt="no retries",
            provider=provider_block("runware", retries=0),
            archive=str(archive_dir),
            size="256x256",
        )
    assert emulator.ledger()["requests"]["runware"]["submit"] == 1
    images = await generate_images(
        prompt="two retries",
        provider=provider_block("runware", retries=2),
        archive=str(archive_dir),
        size="256x256",
    )
    assert len(images) == 1 and emulator.ledger()["requests"]["runware"]["submit"] == 4
