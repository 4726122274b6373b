"""What a person sees of a run in the Prefect UI: thumbnails that decode, links a browser can
open where the archive has them, an edit beside its source, and a batch gallery in pages."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from PIL import Image

from gptimg_flows import ImageArchive, batch_generate, generate_edit_archive, generate_images
from gptimg_flows.archive.thumbnails import THUMB_SIDE
from gptimg_flows.engine.artifacts import cell

from .support.prefect_api import artifacts

pytestmark = pytest.mark.usefixtures("prefect_server")
DATA_URI = re.compile(r"\(data:image/webp;base64,([A-Za-z0-9+/=]+)\)")


def thumbnails(markdown: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in DATA_URI.findall(markdown)]


async def latest(key: str) -> dict[str, Any]:
    return next(a for a in await artifacts() if a["key"] == key)


async def test_every_image_is_shown_as_a_thumbnail_with_prompt_provider_size_and_cost(
    archive_dir: Path,
) -> None:
    await generate_images(
        prompt="artifact: a teapot | on a table",
        n=2,
        provider="offline",
        archive=str(archive_dir),
        size="512x256",
    )
    body = (await latest("generate-images"))["data"]
    thumbs = thumbnails(body)
    assert len(thumbs) == 2
    for thumb in thumbs:
        assert thumb.format == "WEBP" and max(thumb.size) == THUMB_SIDE
        assert thumb.size == (THUMB_SIDE, THUMB_SIDE // 2), "aspect ratio kept"
    assert "artifact: a teapot \\| on a table" in body, "a pipe does not break the table"
    assert "| offline | 512x256 | 0 usd |" in body and body.index("| offline |") < body.rindex(
        "artifact: a teapot"
    )
    # A local archive has no URL a browser may open: the path is shown as text, not a link.
    assert "[open](" not in body and str(archive_dir) in body
    assert len(list((archive_dir / "_thumbs").glob("*/*.webp"))) == 2, "kept beside the images"


async def test_an_edit_is_shown_beside_its_source(archive_dir: Path) -> None:
    result = await generate_edit_archive(
        prompt="artifact: a harbour",
        edit_prompt="artifact: add boats",
        provider="offline",
        archive=str(archive_dir),
        size="128x128",
    )
    body = (await latest("generate-edit-archive"))["data"]
    [generated_row, edited_row] = [line for line in body.splitlines() if "base64," in line]
    assert generated_row.count("base64,") == 1
    assert edited_row.count("base64,") == 2 and "→" in edited_row, "source → edit"
    source, _edit = DATA_URI.findall(edited_row)
    assert source == DATA_URI.findall(generated_row)[0], "the source shown is the generated image"
    assert result.edited[0].parents == [result.generated[0].uri]


async def test_s3_images_get_a_presigned_link_that_says_when_it_expires(
    s3_archive: tuple[str, dict[str, Any]],
) -> None:
    basepath, options = s3_archive
    block = ImageArchive(basepath=basepath, storage_options=options, link_expiry_seconds=3600)
    [image] = await generate_images(
        prompt="artifact: s3 lighthouse", provider="offline", archive=block, size="128x128"
    )
    body = (await latest("generate-images"))["data"]
    assert len(thumbnails(body)) == 1
    [url] = re.findall(r"\[open\]\((http[^)]+)\) \(link expires [0-9-]+ [0-9:]+ UTC\)", body)
    query = parse_qs(urlparse(url).query)
    assert "X-Amz-Expires" in query or "Expires" in query, url
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200 and fetched.content[:4] == b"\x89PNG", "a browser can open it"
    assert image.sha256 in url


async def test_a_public_base_url_gives_permanent_links(archive_dir: Path) -> None:
    block = ImageArchive(basepath=str(archive_dir), public_base_url="https://cdn.example.com/img/")
    [image] = await generate_images(
        prompt="artifact: cdn", provider="offline", archive=block, size="128x128"
    )
    body = (await latest("generate-images"))["data"]
    rel = Path(image.uri).relative_to(archive_dir).as_posix()
    assert f"[open](https://cdn.example.com/img/{rel})" in body and "expires" not in body


async def test_a_large_batch_is_a_gallery_in_row_order_split_into_keyed_pages(
    archive_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptimg_flows.engine.artifacts as shown

    monkeypatch.setattr(shown, "PAGE_ROWS", 3)
    prompts = [f"gallery row {i}" for i in range(7)] + ["bad size row"]
    rows: list[Any] = [*prompts[:7], {"prompt": prompts[7], "size": "100x100"}]
    result = await batch_generate(
        prompts=rows, provider="offline", archive=str(archive_dir), size="128x128"
    )
    assert len(result.images) == 7 and len(result.failures) == 1
    pages = [
        await latest("batch-generate"),
        await latest("batch-generate-page-2"),
        await latest("batch-generate-page-3"),
    ]
    assert [len(thumbnails(p["data"])) for p in pages] == [3, 3, 1]
    assert "(page 1 of 3)" in pages[0]["data"] and "(page 3 of 3)" in pages[2]["data"]
    order = [int(n) for p in pages for n in re.findall(r"!\[row (\d+)\]", p["data"])]
    assert order == list(range(7))
    assert "### Failures (1)" in pages[0]["data"] and "multiples of 16" in pages[0]["data"]
    # Rows count from 0 wherever a person reads them: the failure table says `row`, not `#`.
    assert "| row | prompt | job | error |" in pages[0]["data"]


def test_cells_cannot_break_the_table_or_inject_html() -> None:
    assert cell("a | b\nc <img src=x onerror=alert(1)>") == (
        "a \\| b c &lt;img src=x onerror=alert\\(1\\)&gt;"
    )


@pytest.mark.parametrize(
    "text",
    [
        "shot ![](https://tracker.example/p.gif?u=1)",  # an image that would load a tracker
        "see [our offer](https://phish.example)",  # a link
        "visit https://phish.example or www.phish.example",  # bare URLs autolinked
        "# a heading **bold** _em_ `code`",
    ],
)
def test_user_and_provider_text_is_shown_as_itself_not_as_markdown(text: str) -> None:
    """Prompts, CSV metadata and provider errors come from anywhere: in the artifact they are
    text. (How the UI renders it is checked in Chromium by test_browser.)"""
    out = cell(text)
    assert "![" not in out and "](" not in out and "://" not in out and "www." not in out
    assert "**" not in out and "`" not in out.replace("\\`", "")
    assert re.sub(r"\\(.)", r"\1", out) == text, "every character is still shown"
    assert len(cell("x" * 500, 20)) == 20


def test_a_png_previews_without_reading_its_big_ancillary_chunks(tmp_path: Path) -> None:
    """Pillow reads each private chunk whole into memory; a preview must not (20 such images
    at once were 290 MB of RSS in bench/memory.py)."""
    import struct
    import zlib

    from gptimg_flows.archive.thumbnails import _png_essentials, thumbnail_bytes

    buf = io.BytesIO()
    Image.new("RGB", (400, 200), (200, 30, 30)).save(buf, "PNG")
    png = buf.getvalue()
    pad = b"\0" * (8 * 2**20)
    chunk = struct.pack(">I", len(pad)) + b"prVt" + pad
    chunk += struct.pack(">I", zlib.crc32(b"prVt" + pad))
    padded = png[:-12] + chunk + png[-12:]  # before IEND, as the emulator pads
    path = tmp_path / "padded.png"
    path.write_bytes(padded)
    with path.open("rb") as fh:
        fh.read(8)
        assert len(_png_essentials(fh).getvalue()) < len(png) + 100
    for source in (path, padded):
        with Image.open(io.BytesIO(thumbnail_bytes(source))) as thumb:
            assert thumb.size == (THUMB_SIDE, THUMB_SIDE // 2)
            assert thumb.convert("RGB").getpixel((10, 10))[0] > 150
