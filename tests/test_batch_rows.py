"""Batches keep their rows: input order, the row number and the row's own columns on each
image (result and sidecar), prompts as strings or dicts, and prompts made from a template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import batch_generate
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.flows import BatchResult

pytestmark = pytest.mark.usefixtures("prefect_server")

CSV = (
    "id,sku,campaign,prompt,size\n"
    "p-1,SKU-001,spring,a large red teapot,1024x1024\n"
    "p-2,SKU-002,spring,a tiny blue teapot,64x64\n"
    "p-3,SKU-003,autumn,a tiny green teapot,64x64\n"
    "p-4,SKU-004,autumn,a large yellow teapot,1024x1536\n"
)


def sidecar(uri: str) -> dict[str, Any]:
    return json.loads(Path(uri).with_suffix(".json").read_text())


async def test_csv_rows_keep_their_order_number_and_columns(
    tmp_path: Path, archive_dir: Path
) -> None:
    """Large images take longer to draw than small ones, so with 4 at once the small rows
    finish first: the result is still in input order."""
    prompts = tmp_path / "products.csv"
    prompts.write_text(CSV)

    result: BatchResult = await batch_generate(
        prompts=str(prompts), archive=str(archive_dir), concurrency=4
    )

    assert result.failures == []
    assert [i.row for i in result.images] == [0, 1, 2, 3]
    assert [i.extra["sku"] for i in result.images] == ["SKU-001", "SKU-002", "SKU-003", "SKU-004"]
    assert result.images[1].extra == {"id": "p-2", "sku": "SKU-002", "campaign": "spring"}
    assert [(i.width, i.height) for i in result.images][:2] == [(1024, 1024), (64, 64)]
    for img in result.images:
        side = sidecar(img.uri)
        assert side["row"] == img.row and side["extra"] == img.extra, side

    again: BatchResult = await batch_generate(
        prompts=str(prompts), archive=str(archive_dir), concurrency=4
    )
    assert [(i.row, i.extra["id"], i.sha256) for i in again.images] == [
        (i.row, i.extra["id"], i.sha256) for i in result.images
    ]


async def test_prompts_as_dicts_with_a_template(archive_dir: Path) -> None:
    rows = [
        {"name": "a teapot", "style": "marble", "sku": "T-1"},
        {"name": "a kettle", "style": "walnut", "sku": "K-1", "size": "1536x1024"},
        "a plain mug on a shelf",  # a string is a row with just a prompt
    ]
    result: BatchResult = await batch_generate(
        prompts=[rows[0], rows[1]],
        archive=str(archive_dir),
        size="256x256",
        prompt_template="product shot of {name}, {style} background",
    )
    assert [i.prompt for i in result.images] == [
        "product shot of a teapot, marble background",
        "product shot of a kettle, walnut background",
    ]
    assert [i.extra for i in result.images] == [
        {"name": "a teapot", "style": "marble", "sku": "T-1"},
        {"name": "a kettle", "style": "walnut", "sku": "K-1"},
    ]
    assert (result.images[1].width, result.images[1].height) == (1536, 1024)

    mixed: BatchResult = await batch_generate(
        prompts=rows, archive=str(archive_dir), size="256x256"
    )
    assert [f.index for f in mixed.failures] == [0, 1]
    assert "no `prompt` column" in mixed.failures[0].error
    assert mixed.failures[0].extra == {"name": "a teapot", "style": "marble", "sku": "T-1"}
    assert [(i.row, i.prompt) for i in mixed.images] == [(2, "a plain mug on a shelf")]


async def test_a_template_column_no_row_has_is_refused_before_anything_runs(
    archive_dir: Path,
) -> None:
    with pytest.raises(InvalidRequest, match=r"prompt_template: no row has a column 'colour'"):
        await batch_generate(
            prompts=[{"name": "a teapot"}],
            archive=str(archive_dir),
            prompt_template="{name} in {colour}",
        )
    assert not archive_dir.exists()


async def test_a_row_missing_a_template_column_fails_alone(archive_dir: Path) -> None:
    result: BatchResult = await batch_generate(
        prompts=[{"name": "a teapot", "style": "oak"}, {"name": "a cup"}],
        archive=str(archive_dir),
        size="256x256",
        prompt_template="{name}, {style} background",
    )
    assert [i.row for i in result.images] == [0]
    assert [(f.index, f.error_type) for f in result.failures] == [(1, "InvalidRequest")]
    assert "the row has no column 'style'" in result.failures[0].error


async def test_a_misspelt_request_column_is_refused_not_carried(archive_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"column 'qualty' is not a request field.*'quality'"):
        await batch_generate(
            prompts=[{"prompt": "a teapot", "qualty": "high"}], archive=str(archive_dir)
        )


async def test_a_strict_batch_with_a_failed_row_fails_its_run_after_archiving_every_good_row(
    archive_dir: Path,
) -> None:
    """fail_on_row_failure=True: what a scheduled job needs to notice a failed row. Every row is
    tried first and every image made is archived; then the run is Failed, not Completed."""
    from gptimg_flows import RowsFailed

    rows: list[Any] = ["a good row", {"prompt": "a bad size", "size": "100x100"}, "another"]
    state = await batch_generate(
        prompts=rows,
        archive=str(archive_dir),
        size="256x256",
        fail_on_row_failure=True,
        return_state=True,
    )
    assert state.is_failed(), state
    with pytest.raises(RowsFailed, match=r"1 of 3 row\(s\) failed .* 2 image\(s\) made"):
        await state.result()
    assert len(list(archive_dir.glob("images/*/*.png"))) == 2
    # The same batch without the flag completes, and pays nothing again.
    result = await batch_generate(prompts=rows, archive=str(archive_dir), size="256x256")
    assert len(result.images) == 2 and [f.index for f in result.failures] == [1]
    assert all(i.from_archive for i in result.images)


def test_a_failed_templated_row_shows_its_filled_prompt_and_metadata_keeps_file_order() -> None:
    """#33: the failures table showed an empty prompt for a templated row; a re-run printed
    a row's columns in alphabetical order (as its sidecar keeps them)."""
    from gptimg_flows.blocks.credentials import provider_of
    from gptimg_flows.models import ArchivedImage
    from gptimg_flows.rows import on_row, plan_rows

    rows: list[dict[str, Any]] = [{"name": "kite", "size": "1000x1000"}, {"name": "heron"}]
    requests, failures = plan_rows(rows, {}, "a photo of {name}", provider_of("offline").validate)
    assert requests[0] is None and requests[1] is not None
    assert [(f.index, f.prompt) for f in failures] == [(0, "a photo of kite")]
    kept = ArchivedImage.model_construct(extra={"campaign": "old", "a_sidecar_only": 1, "sku": "x"})
    [shown] = on_row([kept], 3, {"sku": "S-1", "campaign": "spring"})
    assert list(shown.extra.items()) == [
        ("sku", "S-1"),
        ("campaign", "spring"),
        ("a_sidecar_only", 1),
    ]
