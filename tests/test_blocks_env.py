"""Blocks from environment variables, against a real Prefect API: saved, skipped, idempotent,
and never a secret in what is printed or raised."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TypeVar

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client

from gptimg_flows.blocks.credentials import (
    ImageArchive,
    OpenAIImageCredentials,
    RunwareCredentials,
    ScenarioCredentials,
)
from gptimg_flows.blocks.from_env import (
    SOURCES,
    IncompleteEnvironment,
    main,
    plan_from_env,
    save_blocks_from_env,
)
from gptimg_flows.errors import InvalidRequest

pytestmark = pytest.mark.usefixtures("prefect_server")

# Fake keys, distinctive so a leak is found by a plain substring search.
OPENAI = "sk-FAKE-env-openai-4b1e7d"
RUNWARE = "rw-FAKE-env-runware-77c2a0"
SCN_KEY, SCN_SECRET = "scn-FAKE-env-key-19aa", "scn-FAKE-env-secret-e3f0"
SECRETS = [OPENAI, RUNWARE, SCN_KEY, SCN_SECRET]


@pytest.fixture
def prefix() -> str:
    """Block names of this test only (the API server is shared by the session)."""
    return f"t{uuid.uuid4().hex[:8]}"


def _env(**extra: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": OPENAI, "RUNWARE_API_KEY": RUNWARE, **extra}


B = TypeVar("B", bound=Block)


async def _load(cls: type[B], name: str) -> B:
    block = await cls.aload(name)
    assert isinstance(block, cls)
    return block


async def _doc(name: str, cls: type[Block]) -> tuple[object, object]:
    async with get_client() as client:
        doc = await client.read_block_document_by_name(name, cls.get_block_type_slug())
    assert doc.updated is not None
    return doc.id, doc.updated


async def test_saves_the_providers_present_and_skips_the_others(prefix: str) -> None:
    env = _env(RUNWARE_BASE_URL="http://127.0.0.1:9/runware/v1")
    report = await save_blocks_from_env(env, prefix=prefix)

    assert [(b.name, b.action) for b in report.saved] == [
        (f"{prefix}-openai", "created"),
        (f"{prefix}-runware", "created"),
    ]
    assert {s.provider for s in report.skipped} == {"scenario", "skillsvideo", "gptimage2ai"}
    openai = await _load(OpenAIImageCredentials, f"{prefix}-openai")
    assert openai.api_key.get_secret_value() == OPENAI and openai.base_url is None
    runware = await _load(RunwareCredentials, f"{prefix}-runware")
    assert runware.api_key.get_secret_value() == RUNWARE
    assert runware.base_url == "http://127.0.0.1:9/runware/v1"
    text = "\n".join(report.lines())
    assert "GPT Image Runware Credentials" in text and "RUNWARE_BASE_URL" in text
    assert "SKILLS_VIDEO_API_KEY not set" in text
    assert not [s for s in SECRETS if s in text or s in repr(report)]


async def test_a_second_run_changes_nothing_and_a_new_key_updates_in_place(
    prefix: str, tmp_path: Path
) -> None:
    env = _env(SCENARIO_SDK_API_KEY=SCN_KEY, SCENARIO_SDK_API_SECRET=SCN_SECRET)
    first = await save_blocks_from_env(env, prefix=prefix, archive=str(tmp_path / "arch"))
    assert {b.action for b in first.saved} == {"created"} and len(first.saved) == 4
    before = {b.name: await _doc(b.name, _cls(b.slug)) for b in first.saved}

    second = await save_blocks_from_env(env, prefix=prefix, archive=str(tmp_path / "arch"))
    assert {b.action for b in second.saved} == {"unchanged"}
    assert {b.name: await _doc(b.name, _cls(b.slug)) for b in second.saved} == before

    # A field set in the UI survives; only the key changes, in the same document.
    runware = await _load(RunwareCredentials, f"{prefix}-runware")
    runware.timeout_seconds = 33.0
    await runware.asave(f"{prefix}-runware", overwrite=True)
    rotated_env = {**env, "RUNWARE_API_KEY": RUNWARE + "-rotated"}
    third = await save_blocks_from_env(rotated_env, prefix=prefix, archive=str(tmp_path / "arch"))
    assert {b.name: b.action for b in third.saved}[f"{prefix}-runware"] == "updated"
    rotated = await _load(RunwareCredentials, f"{prefix}-runware")
    assert rotated.api_key.get_secret_value() == RUNWARE + "-rotated"
    assert rotated.timeout_seconds == 33.0
    assert (await _doc(f"{prefix}-runware", RunwareCredentials))[0] == before[f"{prefix}-runware"][
        0
    ]
    scenario = await _load(ScenarioCredentials, f"{prefix}-scenario")
    assert scenario.api_secret.get_secret_value() == SCN_SECRET


def _cls(slug: str) -> type[Block]:
    from gptimg_flows.blocks.credentials import CREDENTIAL_BLOCKS

    classes: list[type[Block]] = [*CREDENTIAL_BLOCKS, ImageArchive]
    return {c.get_block_type_slug(): c for c in classes}[slug]


async def test_archive_block_gets_an_absolute_path(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    report = await save_blocks_from_env({}, prefix=prefix, archive="out")
    assert [(b.name, b.slug) for b in report.saved] == [
        (f"{prefix}-archive", "gptimg-image-archive")
    ]
    assert len(report.skipped) == len(SOURCES)
    archive = await _load(ImageArchive, f"{prefix}-archive")
    assert archive.basepath == str(tmp_path / "out")


@pytest.mark.parametrize(
    "env",
    [{"SCENARIO_SDK_API_KEY": SCN_KEY}, {"SCENARIO_SDK_API_SECRET": SCN_SECRET}],
    ids=["key-without-secret", "secret-without-key"],
)
async def test_half_a_scenario_pair_is_a_clear_error_and_nothing_is_saved(
    prefix: str, env: dict[str, str]
) -> None:
    with pytest.raises(IncompleteEnvironment) as err:
        await save_blocks_from_env(_env(**env), prefix=prefix)
    message = str(err.value)
    assert "SCENARIO_SDK_API_KEY" in message and "SCENARIO_SDK_API_SECRET" in message
    assert not [s for s in SECRETS if s in message]
    with pytest.raises(ValueError):  # the complete openai pair was not saved either
        await _load(OpenAIImageCredentials, f"{prefix}-openai")


def test_bad_prefix_and_bad_base_url_are_refused_without_echoing_values() -> None:
    with pytest.raises(InvalidRequest, match="prefix"):
        plan_from_env(_env(), prefix="Prod_1")
    secret_url = "ftp://user:pw-FAKE-9f9f@proxy.example"
    with pytest.raises(InvalidRequest, match="OPENAI_BASE_URL") as err:
        plan_from_env(_env(OPENAI_BASE_URL=secret_url))
    assert "pw-FAKE-9f9f" not in str(err.value)


def test_the_script_prints_names_and_types_never_a_key(
    prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for source in SOURCES:
        for _, var in source.secrets:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(source.base_url_var, raising=False)
    for var, value in _env(
        SCENARIO_SDK_API_KEY=SCN_KEY, SCENARIO_SDK_API_SECRET=SCN_SECRET
    ).items():
        monkeypatch.setenv(var, value)

    assert main(["--prefix", prefix]) == 0
    out, err = capsys.readouterr()
    assert f"{prefix}-scenario" in out and "GPT Image Scenario Credentials" in out
    assert "skipped" in out and "GPTIMAGE2_API_KEY" in out
    assert not [s for s in SECRETS if s in out + err]

    monkeypatch.delenv("SCENARIO_SDK_API_SECRET")
    assert main(["--prefix", prefix]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: IncompleteEnvironment: ") and len(err.splitlines()) == 1
    assert not [s for s in SECRETS if s in out + err]
