"""Text that reads right (issue #34), on the emulator and a real Prefect server: the words a
prompt quotes are read back from every image by the embedded OCR engine; "flag" marks a
misspelt one, "remake" pays for another try (inside the budget), and a re-run pays and reads
nothing again. The emulator's `misspell_text` fault draws the quoted text misspelt, as a model
may."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from gptimg_flows import batch_generate, edit_image, generate_edit_archive, generate_images
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.flows import BatchResult
from gptimg_flows.results import RowsFailed
from gptimg_flows.textcheck import ocr as ocr_module

from .support.prefect_api import artifacts

pytestmark = pytest.mark.usefixtures("prefect_server")

HEADLINE = 'a poster that says "GRAND OPENING" in bold letters'


def _paid(emulator: Any) -> int:
    return len(emulator.ledger()["submissions"])


def _sidecar(image: Any) -> dict[str, Any]:
    return json.loads(Path(image.sidecar_uri.removeprefix("file://")).read_text())


async def test_flag_marks_the_misspelt_image_and_a_rerun_reads_nothing_again(
    emulator: Any, provider_block: Any, archive_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.force("misspell_text", provider="gptimage2ai", count=1)
    kw: dict[str, Any] = {
        "prompts": [HEADLINE, "a shop sign reading 'Fresh Bread Daily'", "a quiet lake at dawn"],
        "provider": provider_block("gptimage2ai"),
        "archive": str(archive_dir),
        "size": "1:1",
        "concurrency": 1,
        "text_check": "flag",
    }
    first: BatchResult = await batch_generate(**kw)
    assert len(first.images) == 3 and first.failures == [] and _paid(emulator) == 3
    assert first.text_check_failed == 1
    checks = [img.text_check for img in first.images]
    assert checks[2] is None, "a prompt that quotes nothing is not checked"
    assert checks[0] is not None and not checks[0].passed, checks[0]
    assert checks[0].expected == ["GRAND OPENING"] and checks[0].lines[0].error_rate > 0
    assert checks[1] is not None and checks[1].passed, checks[1]
    assert checks[1].engine.startswith("rapidocr ")
    assert _sidecar(first.images[0])["text_check"]["passed"] is False
    gallery = next(a for a in await artifacts() if a.get("key") == "batch-generate")
    assert "✗ text" in gallery["data"] and "expected: GRAND OPENING" in gallery["data"]

    def no_ocr(data: bytes) -> list[str]:
        raise AssertionError("a re-run read an image again")

    monkeypatch.setattr(ocr_module, "read_lines", no_ocr)
    again: BatchResult = await batch_generate(**kw)
    assert _paid(emulator) == 3 and all(img.from_archive for img in again.images)
    assert [i.text_check for i in again.images] == checks


async def test_remake_pays_for_another_try_and_returns_the_passing_image_first(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.force("misspell_text", provider="gptimage2ai", count=1)
    kw: dict[str, Any] = {
        "prompt": HEADLINE,
        "provider": provider_block("gptimage2ai"),
        "archive": str(archive_dir),
        "size": "1:1",
        "text_check": "remake",
    }
    images = await generate_images(**kw)
    assert _paid(emulator) == 2
    assert [img.text_check.passed for img in images if img.text_check] == [True, False]
    assert all(Path(img.uri).is_file() and _sidecar(img)["text_check"] for img in images)

    again = await generate_images(**kw)
    assert _paid(emulator) == 2, "a re-run of a remade request paid again"
    assert [i.sha256 for i in again] == [i.sha256 for i in images]


async def test_remakes_stop_at_the_attempts_and_at_the_budget(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.force("misspell_text", provider="gptimage2ai", count=10)
    kw: dict[str, Any] = {
        "prompt": HEADLINE,
        "provider": provider_block("gptimage2ai"),
        "archive": str(archive_dir),
        "size": "1:1",
        "text_check": "remake",
        "text_check_attempts": 2,
    }
    images = await generate_images(**kw)
    assert _paid(emulator) == 3 and len(images) == 3
    assert not any(img.text_check and img.text_check.passed for img in images)

    capped = await generate_images(**{**kw, "prompt": HEADLINE + " again"}, max_cost=20)
    assert _paid(emulator) == 5 and len(capped) == 2, "max_cost of 2 images was passed"


async def test_expected_text_from_the_flow_and_from_a_row_and_a_failed_row(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    rows = [  # the row's own expected_text wins over its quotes: never drawn, so it fails
        {"prompt": 'a bakery window that says "Fresh Bread"', "expected_text": ["Hot Coffee"]},
        {"prompt": "a cafe sign with the words Espresso Bar"},  # the flow's expected_text
    ]
    with pytest.raises(RowsFailed) as caught:
        await batch_generate(
            prompts=rows,
            provider=provider_block("gptimage2ai"),
            archive=str(archive_dir),
            size="1:1",
            concurrency=1,
            text_check="flag",
            expected_text=["Espresso Bar"],
            fail_on_row_failure=True,
        )
    result = caught.value.result
    assert result is not None and len(result.images) == 2
    assert [f.error_type for f in result.failures] == ["TextCheckFailed"]
    assert result.failures[0].index == 0 and "Hot Coffee" in result.failures[0].error
    assert result.images[1].text_check is not None
    assert result.images[1].text_check.expected == ["Espresso Bar"]
    assert result.images[1].text_check.passed
    assert "expected_text" not in result.images[0].extra


async def test_an_edit_keeps_the_text_its_source_was_checked_for(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    block = provider_block("openai")
    kw: dict[str, Any] = {"provider": block, "archive": str(archive_dir), "size": "1024x1024"}
    [source] = await generate_images(prompt=HEADLINE, text_check="flag", **kw)
    assert source.text_check is not None and source.text_check.passed
    [edited] = await edit_image(
        image=source.uri, prompt="the same poster, at night", text_check="flag", **kw
    )
    assert edited.text_check is not None and edited.text_check.expected == ["GRAND OPENING"]


async def test_a_check_without_the_ocr_extra_is_refused_before_paying(
    emulator: Any, provider_block: Any, archive_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ocr_module, "find_spec", lambda name: None)
    with pytest.raises(InvalidRequest, match=r"pip install 'gptimg-flows\[ocr\]'"):
        await generate_images(
            prompt=HEADLINE,
            provider=provider_block("gptimage2ai"),
            archive=str(archive_dir),
            size="1:1",
            text_check="flag",
        )
    assert emulator.ledger()["requests"] == {}


def test_gptimg_batch_flags_a_misread_headline_in_its_summary(
    emulator: Any, provider_block: Any, archive_dir: Path, tmp_path: Path
) -> None:
    name = f"text-{uuid.uuid4().hex[:8]}"
    provider_block("gptimage2ai").save(name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(HEADLINE + "\n" + "a shop sign reading 'Fresh Bread Daily'\n")
    emulator.force("misspell_text", provider="gptimage2ai", count=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "GPTIMAGE2"))}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    args = ["batch", str(prompts), "-p", name, "-a", str(archive_dir), "--size", "1:1"]
    args += ["--concurrency", "1", "--text-check", "flag"]
    done = subprocess.run(
        [sys.executable, "-m", "gptimg_flows.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # the console wraps long lines
    assert "text misread" in out and "1 image(s)" in out, out
    assert "TEXT MISREAD: expected ['GRAND OPENING']" in out, out
    assert "text ok" in out


async def test_a_pipeline_edits_only_the_candidate_whose_text_passed(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.force("misspell_text", provider="openai", count=1)  # the first candidate
    result = await generate_edit_archive(
        prompt=HEADLINE,
        edit_prompt="the same poster, at night",
        provider=provider_block("openai"),
        archive=str(archive_dir),
        size="1024x1024",
        n=2,
        text_check="flag",
    )
    checks = [img.text_check for img in result.generated]
    assert [c.passed for c in checks if c] == [False, True], checks
    assert len(result.edited) == 1, "an edit was paid for on a misspelt source"
    assert result.edited[0].extra["derived_from"] == result.generated[1].uri
    assert result.edited[0].text_check is not None
    assert result.edited[0].text_check.expected == ["GRAND OPENING"]


async def test_a_remake_that_fails_still_returns_the_image_already_paid_for(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(balance={"gptimage2ai": 10})  # one image's credits
    emulator.force("misspell_text", provider="gptimage2ai", count=1)
    images = await generate_images(
        prompt=HEADLINE,
        provider=provider_block("gptimage2ai"),
        archive=str(archive_dir),
        size="1:1",
        text_check="remake",
    )
    assert len(images) == 1 and images[0].text_check is not None
    assert not images[0].text_check.passed and Path(images[0].uri).is_file()


async def test_a_check_that_cannot_work_is_refused_before_paying(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    kw: dict[str, Any] = {
        "provider": provider_block("openai"),
        "archive": str(archive_dir),
        "text_check": "flag",
    }
    with pytest.raises(InvalidRequest, match=r"size 128x128 is too small for a text check"):
        await generate_images(prompt=HEADLINE, size="128x128", **kw)
    with pytest.raises(InvalidRequest, match=r"expected_text has an empty line"):
        await generate_images(prompt=HEADLINE, size="1024x1024", expected_text=[""], **kw)
    long = 'a flyer that says "' + "Fresh Bread Every Day " * 6 + '"'
    with pytest.raises(InvalidRequest, match=r"the text the prompt quotes is 108 characters"):
        await generate_edit_archive(prompt=long, edit_prompt="at night", size="1024x1024", **kw)
    rows = [{"prompt": HEADLINE, "expected_text": ["  "]}, {"prompt": HEADLINE}]
    result: BatchResult = await batch_generate(prompts=rows, size="1024x1024", concurrency=1, **kw)
    assert [f.index for f in result.failures] == [0] and len(result.images) == 1
    assert "expected_text has an empty line" in result.failures[0].error
    assert _paid(emulator) == 1, "only the valid row was paid for"


async def test_the_daily_pipeline_remakes_a_misspelt_poster_before_editing_it(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    import datetime

    from gptimg_flows import daily_content

    emulator.force("misspell_text", provider="openai", count=1)  # the first try
    kw: dict[str, Any] = {
        "prompt_template": 'a poster for {theme}, its headline "Open {date:%B %d}"',
        "themes": ["the market"],
        "edit_prompt": "the same poster, warmer light",
        "provider": provider_block("openai"),
        "archive": str(archive_dir),
        "size": "1024x1024",
        "run_date": datetime.date(2026, 11, 23),
        "text_check": "remake",
    }
    result = await daily_content(**kw)
    checks = [img.text_check for img in result.generated]
    assert [c.passed for c in checks if c] == [True, False], "the passing remake comes first"
    assert checks[0] is not None and checks[0].expected == ["Open November 23"]
    assert len(result.edited) == 1 and _paid(emulator) == 3, "two tries and one edit"
    assert result.edited[0].extra["derived_from"] == result.generated[0].uri
    again = await daily_content(**kw)  # the schedule's re-run of the day pays nothing
    assert _paid(emulator) == 3 and [i.uri for i in again.edited] == [result.edited[0].uri]
