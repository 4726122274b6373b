"""The blocks: Prefect's own block checks, registration through the entry point, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from gptimg_flows import ImageArchive, generate_images
from gptimg_flows.blocks.credentials import CREDENTIAL_BLOCKS, ScenarioCredentials

ALL_BLOCKS = [*CREDENTIAL_BLOCKS, ImageArchive]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.__name__)
class TestEachBlock(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, request: pytest.FixtureRequest) -> type[Block]:  # type: ignore[override]
        return request.param  # type: ignore[no-any-return]

    @pytest.mark.skip(reason="our blocks carry no logo yet, and fetching one needs the internet")
    def test_has_a_valid_image(self, block: type[Block]) -> None:
        raise AssertionError("unreachable")


def test_block_type_names_are_our_own() -> None:
    names = {b.get_block_type_name() for b in ALL_BLOCKS}
    slugs = {b.get_block_type_slug() for b in ALL_BLOCKS}
    assert len(names) == len(ALL_BLOCKS) and "OpenAI Credentials" not in names
    assert all(s.startswith("gptimg-") for s in slugs), slugs


def test_package_is_a_prefect_collection() -> None:
    found = [e for e in entry_points(group="prefect.collections") if e.name == "gptimg_flows"]
    assert found, "the prefect.collections entry point is missing (pip install -e .?)"
    # the blocks' module: the package itself imports its names lazily (tests/test_light_cli.py)
    assert found[0].value == "gptimg_flows.blocks"


@pytest.mark.usefixtures("prefect_server")
async def test_prefect_block_register_finds_every_block() -> None:
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "gptimg_flows"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    async with get_client() as client:
        for block in ALL_BLOCKS:
            block_type = await client.read_block_type_by_slug(block.get_block_type_slug())
            assert block_type.name == block.get_block_type_name()
            assert block_type.code_example and "load(" in block_type.code_example


@pytest.mark.usefixtures("prefect_server")
async def test_saved_blocks_are_used_by_name_and_keep_secrets_masked(
    provider_block: Any, emulator: Any, tmp_path: Path
) -> None:
    block = provider_block("scenario")
    await block.save("scenario-test", overwrite=True)
    await ImageArchive(basepath=str(tmp_path / "named")).save("named-archive", overwrite=True)
    images = await generate_images(
        prompt="a saved block", provider="scenario-test", archive="named-archive", size="256x256"
    )
    assert images[0].uri.startswith(str(tmp_path / "named"))
    async with get_client() as client:
        doc = await client.read_block_document_by_name(
            "scenario-test", ScenarioCredentials.get_block_type_slug(), include_secrets=False
        )
    assert "emu-scenario-secret" not in str(doc.data) and "emu-scenario-key" not in str(doc.data)
    loaded = await ScenarioCredentials.aload("scenario-test")
    assert loaded.api_secret.get_secret_value() == "emu-scenario-secret"


@pytest.mark.usefixtures("prefect_server")
async def test_a_blank_key_is_refused_when_made_and_a_blank_saved_one_is_named(
    archive_dir: Path,
) -> None:
    """#33: a blank key used to be saved quietly and fail later with "set OPENAI_API_KEY"."""
    from pydantic import SecretStr, ValidationError

    from gptimg_flows.blocks.credentials import OpenAIImageCredentials
    from gptimg_flows.errors import InvalidRequest

    with pytest.raises(ValidationError, match=r"OpenAIImageCredentials.api_key is empty"):
        OpenAIImageCredentials(api_key="   ")
    with pytest.raises(ValidationError, match=r"ScenarioCredentials.api_secret is empty"):
        ScenarioCredentials(api_key="k", api_secret="")
    # Blanked another way (the UI's form does not run our checks): named when used.
    from prefect.client.schemas.actions import BlockDocumentUpdate

    await OpenAIImageCredentials(api_key=SecretStr("sk-x")).asave("blank-key", overwrite=True)
    async with get_client() as client:
        doc = await client.read_block_document_by_name(
            "blank-key", OpenAIImageCredentials.get_block_type_slug(), include_secrets=True
        )
        data = {**doc.data, "api_key": ""}
        await client.update_block_document(doc.id, BlockDocumentUpdate(data=data))
    with pytest.raises(InvalidRequest, match=r"saved block 'blank-key' cannot be used: .*empty"):
        await generate_images(prompt="x", provider="blank-key", archive=str(archive_dir))
    # an estimate needs no key: priced at the provider's documented prices, and it says why
    from gptimg_flows import ImageRequest, estimate_cost

    request = ImageRequest(prompt="x", size="1024x1024", quality="low")
    estimate = await estimate_cost(request, provider="blank-key")
    assert estimate.total == (await estimate_cost(request, provider="openai")).total
    assert estimate.total.get("usd", 0) > 0
    noted = [n for n in estimate.notes if "'blank-key' cannot be used" in n]
    assert noted and "documented prices" in noted[0], estimate.notes
