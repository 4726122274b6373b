"""A deployment's read roots come from configuration, never from a run's parameters (#32, 9).

`archive="/root"` given to a deployment's run made `/root` a read root: any prompt file under
it was read, sent to the provider and shown in the artifact. A deployment's run now reads local
files only under `GPTIMG_READ_ROOTS` and the folder of an archive that came from configuration
(a saved ImageArchive block, the worker's `GPTIMG_ARCHIVE`); a parameter-named archive is still
written to. A deployment's run is simulated in process the way Prefect documents
(`PREFECT__RUNTIME__DEPLOYMENT__ID`), on the real test server.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import ImageArchive, batch_generate, edit_image
from gptimg_flows.blocks.resolve import in_deployment_run, resolve_archive
from gptimg_flows.engine.reading import read_rules
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.reads import READ_ROOTS_ENV

from .support.images import png_file

PRIVATE = "the worker's private note"


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This test runs as a deployment's flow run would, on a worker whose temporary directory
    is not where the test's folders are (a deployment refuses an archive under it)."""
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(worker_tmp))
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))
    monkeypatch.delenv(READ_ROOTS_ENV, raising=False)
    monkeypatch.delenv("GPTIMG_ARCHIVE", raising=False)
    assert in_deployment_run()


def _prompt_file(folder: Path, text: str = PRIVATE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.txt"
    path.write_text(text + "\n")
    return path


def _images(folder: Path) -> list[Path]:
    return list(folder.glob("images/*/*.png"))


# -- (1) the finding -----------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_server", "deployed")
async def test_a_folder_named_by_the_archive_parameter_is_not_read_in_a_deployments_run(
    provider_block: Any, emulator: Any, tmp_path: Path
) -> None:
    named = tmp_path / "root"
    prompts = _prompt_file(named)
    with pytest.raises(InvalidRequest) as caught:
        await batch_generate(
            prompts=str(prompts), provider=provider_block("openai"), archive=str(named)
        )
    text = str(caught.value)
    assert str(prompts) in text and "outside the folders this run may read" in text, text
    assert READ_ROOTS_ENV in text and "never a folder a parameter names" in text, text
    assert PRIVATE not in text
    assert emulator.ledger()["submissions"] == []
    assert _images(named) == []


@pytest.mark.usefixtures("prefect_server", "deployed")
async def test_input_images_and_masks_under_a_parameter_named_archive_are_not_read(
    provider_block: Any, emulator: Any, tmp_path: Path
) -> None:
    named = tmp_path / "named"
    named.mkdir()
    image, mask = png_file(named / "in.png"), png_file(named / "mask.png")
    elsewhere = png_file(tmp_path / "in.png")
    for kwargs in ({"image": str(image)}, {"image": str(elsewhere), "mask": str(mask)}):
        with pytest.raises(InvalidRequest, match="outside the folders this run may read"):
            await edit_image(
                prompt="x", provider=provider_block("openai"), archive=str(named), **kwargs
            )
    assert emulator.ledger()["submissions"] == []


@pytest.mark.usefixtures("prefect_server", "deployed")
async def test_an_unsaved_archive_block_in_a_parameter_is_not_a_read_root_either(
    tmp_path: Path,
) -> None:
    """What a parameter's JSON object becomes (an ImageArchive with no saved document)."""
    folder = tmp_path / "unsaved"
    prompts = _prompt_file(folder)
    built = ImageArchive.model_validate({"basepath": str(folder)})
    with pytest.raises(InvalidRequest, match="outside the folders this run may read"):
        await batch_generate(prompts=str(prompts), provider="offline", archive=built)


# -- (2) a saved block's folder, and the worker's default archive -------------------------------


@pytest.mark.usefixtures("prefect_server", "deployed")
async def test_a_saved_archive_blocks_folder_is_still_a_read_root(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    prompts = _prompt_file(folder, "a lighthouse at dawn")
    name = f"read-roots-{uuid.uuid4().hex[:8]}"
    await ImageArchive(basepath=str(folder)).asave(name)
    by_name = await batch_generate(prompts=str(prompts), provider="offline", archive=name)
    loaded = await ImageArchive.aload(name)  # a saved block passed as an object (a `$ref`)
    by_object = await batch_generate(prompts=str(prompts), provider="offline", archive=loaded)
    assert [i.prompt for i in by_name.images + by_object.images] == ["a lighthouse at dawn"] * 2
    assert len(_images(folder)) == 1


@pytest.mark.usefixtures("deployed")
async def test_the_workers_default_archive_folder_is_a_read_root_however_it_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "default"
    folder.mkdir()
    monkeypatch.setenv("GPTIMG_ARCHIVE", str(folder))
    for archive in (None, str(folder), str(folder) + "/"):
        rules = read_rules(await resolve_archive(archive))
        assert rules.roots == (str(folder.resolve()),), archive


# -- (3) GPTIMG_READ_ROOTS -----------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_server", "deployed")
async def test_read_roots_still_work_and_a_parameter_named_archive_is_still_written_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    prompts = _prompt_file(inputs, "a kite over dunes")
    monkeypatch.setenv(READ_ROOTS_ENV, str(inputs))
    named = tmp_path / "named"
    result = await batch_generate(prompts=str(prompts), provider="offline", archive=str(named))
    assert [i.prompt for i in result.images] == ["a kite over dunes"]
    assert len(_images(named)) == 1


# -- storage options a parameter gives are not used for reads -----------------------------------


@pytest.mark.usefixtures("deployed")
async def test_a_parameter_named_archive_lends_no_storage_options_to_reads(
    tmp_path: Path,
) -> None:
    """`{"s3": {}}` would read any bucket with the worker's own credential chain, and an s3://
    archive URL would do the same for its protocol: in a deployment's run, neither does."""
    built = ImageArchive(
        basepath=str(tmp_path / "a"), read_storage_options=json.dumps({"s3": {}, "gs": {}})
    )
    for archive in (built, "s3://any-bucket/prefix"):
        store = await resolve_archive(archive)
        assert not store.configured
        rules = read_rules(store)
        assert dict(rules.storage_options) == {} and rules.options_from == "nobody", archive


@pytest.mark.usefixtures("prefect_server", "deployed")
async def test_a_saved_archive_blocks_read_options_are_still_used(tmp_path: Path) -> None:
    name = f"read-options-{uuid.uuid4().hex[:8]}"
    options = {"gs": {"token": "anon"}}
    await ImageArchive(
        basepath=str(tmp_path / "saved"), read_storage_options=json.dumps(options)
    ).asave(name)
    rules = read_rules(await resolve_archive(name))
    assert dict(rules.storage_options) == options


# -- (4) outside a deployment's run, nothing changes ---------------------------------------------


@pytest.mark.usefixtures("prefect_server")
async def test_outside_a_deployments_run_any_local_file_is_read_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PREFECT__RUNTIME__DEPLOYMENT__ID", raising=False)
    monkeypatch.delenv(READ_ROOTS_ENV, raising=False)
    assert not in_deployment_run()
    named = tmp_path / "named"
    for prompts in (_prompt_file(named, "inside"), _prompt_file(tmp_path / "other", "outside")):
        result = await batch_generate(prompts=str(prompts), provider="offline", archive=str(named))
        assert len(result.images) == 1
    built = ImageArchive(basepath=str(named), read_storage_options=json.dumps({"s3": {}}))
    rules = read_rules(await resolve_archive(built))
    assert rules.roots is None and dict(rules.storage_options) == {"s3": {}}
