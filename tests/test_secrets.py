"""No credential ever reaches what a user or an attacker could read after a run.

Every flow and the CLI run with distinctive keys for all five providers (and an S3 archive
whose secret is in a block): passed as block objects, as saved blocks named bare or as
`<slug>/<name>`, and saved by `gptimg blocks create` from environment variables. Some runs fail
after the provider was called (refused keys, a job the provider fails), so error logs,
tracebacks and failed-state messages are written too. Then everything readable is scanned, and
each place must show what it was read for (the prompts, the failures, the block names), so the
scan cannot pass by reading nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    get_current_settings,
)
from pydantic import SecretStr

from gptimg_flows import (
    ImageArchive,
    ScenarioCredentials,
    batch_generate,
    daily_content,
    edit_image,
    generate_edit_archive,
    generate_images,
)
from gptimg_flows.blocks.from_env import SOURCES
from gptimg_flows.errors import AuthError, JobFailed

from .support.secret_scan import Place, needles, read_files, read_prefect_api_until, read_s3

pytestmark = pytest.mark.usefixtures("prefect_server")
ROOT = Path(__file__).resolve().parents[1]

#: Distinctive keys: each half is distinctive too, so a truncated or masked key is found.
KEYS: dict[str, Any] = {
    "openai": "sk-proj-CanaryOpenaiHeadQ7-CanaryOpenaiTailQ7",
    "scenario": (
        "scn-CanaryScenarioKeyHeadQ7-CanaryScenarioKeyTailQ7",
        "scn-CanaryScenarioSecretHeadQ7-CanaryScenarioSecretTailQ7",
    ),
    "runware": "rw-CanaryRunwareHeadQ7-CanaryRunwareTailQ7",
    "skillsvideo": "sv-CanarySkillsHeadQ7-CanarySkillsTailQ7",
    "gptimage2ai": "gi-CanaryGptimage2HeadQ7-CanaryGptimage2TailQ7",
}
WRONG_KEY = "sk-proj-CanaryWrongKeyHeadQ7-CanaryWrongKeyTailQ7"
WRONG_SECRET = "scn-CanaryWrongSecretHeadQ7-CanaryWrongSecretTailQ7"
S3_KEY_ID = "AKIACANARYS3KEYID7Q"  # an access key id is in every presigned URL: not a secret
S3_SECRET = "CanaryS3SecretHeadQ7/CanaryS3SecretTailQ7"

SECRETS = {
    "openai key": KEYS["openai"],
    "scenario key": KEYS["scenario"][0],
    "scenario secret": KEYS["scenario"][1],
    "runware key": KEYS["runware"],
    "skillsvideo key": KEYS["skillsvideo"],
    "gptimage2ai key": KEYS["gptimage2ai"],
    "wrong openai key": WRONG_KEY,
    "wrong scenario secret": WRONG_SECRET,
    "S3 secret access key": S3_SECRET,
}
NEEDLES = needles(
    SECRETS,
    {
        "scenario key:secret": KEYS["scenario"],
        "scenario key:wrong secret": (KEYS["scenario"][0], WRONG_SECRET),
    },
)
#: The variables `gptimg blocks create` reads (and their base URLs).
ENV_VARS = {var for s in SOURCES for _, var in s.secrets} | {s.base_url_var for s in SOURCES}
OBFUSCATED = "********"  # how the Prefect API shows a secret field read without secrets


def _block(provider_block: Any, name: str, **kw: Any) -> Any:
    key = KEYS[name]
    if isinstance(key, tuple):
        return provider_block(name, api_key=key[0], api_secret=key[1], **kw)
    return provider_block(name, api_key=key, **kw)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`gptimg ARGS` as a user runs it, with none of a developer's own key variables."""
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    base["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return subprocess.run(
        [sys.executable, "-m", "gptimg_flows.cli", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def _cli_env(emulator: Any, **keys: str) -> dict[str, str]:
    """The variables `gptimg blocks create` reads, base URLs pointed at the emulator."""
    urls = {s.base_url_var: emulator.base_url(s.provider) for s in SOURCES}
    return {**urls, **keys}


def test_the_scan_finds_each_form_of_a_leak() -> None:
    """Whole, halved, as a header, base64'd, pickled into a base64 result file, hex: found."""
    import base64
    import gzip
    import pickle
    from urllib.parse import quote

    key, (scn_key, scn_secret) = KEYS["openai"], KEYS["scenario"]
    basic = base64.b64encode(f"{scn_key}:{scn_secret}".encode()).decode()
    pickled = base64.encodebytes(pickle.dumps(RuntimeError(f"refused {key}"))).decode()
    forms = {
        "whole": f"error: {key}",
        "upper-cased": key.upper(),
        "masked": f"Incorrect API key provided: {key[:24]}****",
        "tail": f"key ending {key[-24:]}",
        "bearer": f"Authorization: Bearer {key}",
        "basic": f"Authorization: Basic {basic}",
        "pickled in a result file": pickled,
        "gzipped and base64": base64.b64encode(gzip.compress(key.encode())).decode(),
        "base64 glued to a word": "token" + base64.b64encode(f"x{key}".encode()).decode(),
        "url-encoded": f"?secret={quote(S3_SECRET, safe='')}",
        "hex": key.encode().hex(),
    }
    for form, text in forms.items():
        place = Place("test")
        place.add(form, f"some text around it\n{text}\nand after".encode())
        assert place.leaks(NEEDLES), form
    clean = Place("test")
    clean.add("clean", f"{uuid.uuid4()} {'ab' * 64} {basic[:20]} sk-proj-… no key here")
    assert clean.leaks(NEEDLES) == []


async def test_no_key_anywhere_after_every_flow_and_the_cli(
    provider_block: Any,
    emulator: Any,
    tmp_path: Path,
    s3_archive: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    caplog.set_level(logging.DEBUG, logger="gptimg_flows")
    caplog.set_level(logging.INFO, logger="httpx")
    monkeypatch.setenv("GPTIMG_ALLOW_PRIVATE_URLS", "1")  # moto and the emulator: 127.0.0.1
    emulator.configure(keys=KEYS)
    run = uuid.uuid4().hex[:6]
    archive = tmp_path / "archive"
    where = str(archive)
    image, mask, mask_1k = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "mask-1k.png"
    Image.new("RGB", (256, 256), (40, 90, 160)).save(image)
    for path, side in ((mask, 256), (mask_1k, 1024)):  # transparent top half = edit there
        sky = Image.new("RGBA", (side, side), (0, 0, 0, 255))
        sky.paste((0, 0, 0, 0), (0, 0, side, side // 2))
        sky.save(path)

    # -- saved blocks, so block documents (and their loads) are in the database ---------------
    saved = {name: f"{run}-{name}" for name in KEYS}
    for name, block_name in saved.items():
        await _block(provider_block, name).asave(block_name, overwrite=True)
    wrong_scenario = f"{run}-scenario-wrong"
    await ScenarioCredentials(
        api_key=KEYS["scenario"][0],
        api_secret=WRONG_SECRET,
        base_url=emulator.base_url("scenario"),
    ).asave(wrong_scenario, overwrite=True)
    s3_base, s3_options = s3_archive
    s3_block = f"{run}-s3"
    await ImageArchive(
        basepath=s3_base,
        storage_options={k: v for k, v in s3_options.items() if k not in ("key", "secret")},
        secret_storage_options=SecretStr(json.dumps({"key": S3_KEY_ID, "secret": S3_SECRET})),
    ).asave(s3_block, overwrite=True)

    def slug(name: str) -> str:
        return f"gptimg-{name}-credentials/{saved[name]}"

    prompts: list[str] = []  # every prompt a successful run archived
    in_files: list[str] = []  # those given in a prompt file (not a flow parameter)

    def p(text: str, in_file: bool = False) -> str:
        prompts.append(f"{run} {text}")
        if in_file:
            in_files.append(prompts[-1])
        return prompts[-1]

    # -- every flow, every provider, three ways of naming the credentials ---------------------
    await generate_images(
        prompt=p("generate via scenario"), provider=slug("scenario"), archive=where, size="256x256"
    )
    await generate_images(
        prompt=p("generate via gptimage2ai"),
        archive=where,
        size="1:1",
        provider=_block(provider_block, "gptimage2ai"),
        extras={"style": "anime"},
    )
    await generate_images(
        prompt=p("generate via skillsvideo"),
        provider=saved["skillsvideo"],
        archive=where,
        size="1:1",
    )
    await edit_image(
        image=str(image),
        mask=str(mask),
        prompt=p("edit via openai"),
        provider=saved["openai"],
        archive=where,
    )
    await edit_image(
        image=str(image),
        mask=str(mask),
        prompt=p("edit via scenario"),
        provider=slug("scenario"),
        archive=where,
    )
    await edit_image(
        image=str(image),
        mask=str(mask),
        prompt=p("edit via skillsvideo"),
        provider=_block(provider_block, "skillsvideo"),
        archive=where,
    )
    await generate_edit_archive(
        prompt=p("pipeline via openai"),
        edit_prompt=p("pipeline edit"),
        mask=str(mask),
        provider=_block(provider_block, "openai"),
        archive=where,
        size="256x256",
    )
    await generate_edit_archive(
        prompt=p("pipeline via gptimage2ai on s3"),
        edit_prompt=p("pipeline edit on s3"),
        archive=s3_block,
        provider=slug("gptimage2ai"),
        size="1:1",
    )
    await batch_generate(
        prompts=[p("batch list a"), p("batch list b")],
        provider=_block(provider_block, "runware"),
        archive=where,
        size="256x256",
    )
    prompt_file = tmp_path / "prompts.jsonl"
    lines = [{"prompt": p(f"batch file {i}", in_file=True)} for i in range(3)]
    lines.append({"prompt": f"{run} batch file bad size", "size": "banana"})
    prompt_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    emulator.force("job_fail", provider="runware")  # one item fails after it was paid for
    from_file = await batch_generate(
        prompts=str(prompt_file), provider=slug("runware"), archive=where, size="256x256"
    )
    assert len(from_file.images) == 2 and len(from_file.failures) == 2
    assert "JobFailed" in {f.error_type for f in from_file.failures}  # and the bad size
    daily = await daily_content(
        prompt_template=f"{run} daily {{theme}} on {{date:%d %B %Y}}",
        themes=["posters"],
        edit_prompt=p("daily edit"),
        provider=saved["skillsvideo"],
        mask=str(mask_1k),
        archive=where,
        size="1:1",
        run_date=date(2031, 5, 17),
    )
    prompts.append(daily.generated[0].prompt)
    assert daily.generated[0].prompt == f"{run} daily posters on 17 May 2031"

    # -- failures after the provider was called ------------------------------------------------
    with pytest.raises(AuthError) as refused:
        await generate_images(
            prompt=f"{run} refused openai key",
            archive=where,
            provider=provider_block("openai", api_key=WRONG_KEY),
        )
    with pytest.raises(AuthError) as refused_edit:
        await edit_image(
            image=str(image),
            mask=str(mask),
            prompt=f"{run} refused scenario",
            provider=wrong_scenario,
            archive=where,
        )
    emulator.force("job_fail", provider="skillsvideo")
    with pytest.raises(JobFailed) as failed:
        await generate_images(
            prompt=f"{run} failed skillsvideo job",
            archive=where,
            provider=slug("skillsvideo"),
            size="1:1",
        )
    errors = [refused.value, refused_edit.value, failed.value]

    # -- the CLI, from environment variables to a failing --debug run ---------------------------
    cp = f"{run}cli"
    cli_archive = tmp_path / "cli-archive"
    env_keys = {
        "OPENAI_API_KEY": KEYS["openai"],
        "SCENARIO_SDK_API_KEY": KEYS["scenario"][0],
        "SCENARIO_SDK_API_SECRET": KEYS["scenario"][1],
        "RUNWARE_API_KEY": KEYS["runware"],
        "SKILLS_VIDEO_API_KEY": KEYS["skillsvideo"],
        "GPTIMAGE2_API_KEY": KEYS["gptimage2ai"],
    }
    cli_prompts = tmp_path / "cli-prompts.jsonl"
    cli_lines = [p(f"cli batch {i}", in_file=True) for i in range(2)]
    cli_prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in cli_lines))
    # Commands after `blocks create` run without the key variables: the CLI's last-line
    # redaction of their values cannot then hide a leak.
    commands: list[tuple[list[str], dict[str, str], int]] = [
        (
            ["blocks", "create", "--prefix", cp, "--archive", str(cli_archive)],
            _cli_env(emulator, **env_keys),
            0,
        ),
        (
            ["blocks", "create", "--prefix", f"{cp}w"],
            _cli_env(emulator, OPENAI_API_KEY=WRONG_KEY),
            0,
        ),
        (
            [
                "generate",
                p("cli generate via scenario"),
                "-p",
                f"{cp}-scenario",
                "-a",
                f"{cp}-archive",
                "--size",
                "256x256",
            ],
            {},
            0,
        ),
        (
            [
                "generate",
                p("cli generate via gptimage2ai"),
                "-p",
                f"{cp}-gptimage2ai",
                "-a",
                f"{cp}-archive",
                "--size",
                "1:1",
                "--extra",
                "style=anime",
                "--json",
            ],
            {},
            0,
        ),
        (
            [
                "edit",
                str(image),
                p("cli edit via openai"),
                "-m",
                str(mask),
                "-p",
                f"{cp}-openai",
                "-a",
                f"{cp}-archive",
                "--json",
            ],
            {},
            0,
        ),
        (
            [
                "batch",
                str(cli_prompts),
                "-p",
                f"{cp}-runware",
                "-a",
                f"{cp}-archive",
                "--size",
                "256x256",
            ],
            {},
            0,
        ),
        (
            [
                "--debug",
                "generate",
                f"{run} cli refused",
                "-p",
                f"{cp}w-openai",
                "-a",
                str(cli_archive),
            ],
            {},
            1,
        ),
    ]
    cli_output = Place("CLI output (stdout and stderr)")
    for args, env, code in commands:
        done = _cli(*args, env=env)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        cli_output.add(f"gptimg {' '.join(args)}: stdout", done.stdout)
        cli_output.add(f"gptimg {' '.join(args)}: stderr", done.stderr)
    cli_blocks = [f"{cp}-{name}" for name in KEYS] + [f"{cp}w-openai"]

    # Every provider was called, and refused or failed where meant to.
    ledger = emulator.ledger()
    assert {s["provider"] for s in ledger["submissions"]} == set(KEYS)
    assert ledger["rejected"].get("openai", {}).get("401", 0) >= 2  # in-process and CLI
    assert ledger["rejected"].get("scenario", {}).get("401", 0) >= 1
    assert {f["provider"] for f in ledger["faults"] if f["kind"] == "job_fail"} == {
        "runware",
        "skillsvideo",
    }

    # -- read everything -------------------------------------------------------------------------
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    await asyncio.to_thread(APILogWorker.drain_all)
    await asyncio.to_thread(EventsWorker.drain_all)
    all_blocks = [*saved.values(), wrong_scenario, s3_block, *cli_blocks, f"{cp}-archive"]
    failures = ["AuthError", "JobFailed"]
    # daily_content fills its prompt inside its own run (no subflow): a log line, not a parameter
    params = [t for t in prompts if t not in in_files and "daily posters" not in t]
    api = await read_prefect_api_until(
        since,
        {
            "flow runs": [
                *params,
                str(prompt_file),
                slug("scenario"),
                saved["openai"],
                s3_block,
                f"{cp}-runware",
                "**********",
                f"{run} refused openai key",
                f"{run} cli refused",
            ],
            "flow run states": ["Completed", *failures, "credentials refused"],
            "task runs": ["upload-inputs", "job-", "Completed", "Failed"],
            "task run states": ["Completed", *failures],
            "logs": [
                f"prompt for 2031-05-17: {run} daily posters",
                "batch: 2 image(s)",
                *failures,
                "Traceback",
            ],
            "artifacts": [*prompts, "Failures", "JobFailed"],
            "events": [
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.task-run.Failed",
                f"{run}-scenario",
            ],
            "block documents": [*all_blocks, OBFUSCATED],
        },
    )

    db_url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    db = Place("Prefect database files (raw bytes)")
    read_files(db, Path(db_url.split(":///", 1)[1]).parent)
    db.evidence = [*prompts, *all_blocks, *failures, "gptimg-scenario-credentials"]
    home = Place("PREFECT_HOME (result store, logs, profiles)")
    read_files(home, Path(str(PREFECT_HOME.value())))
    home.evidence = ["storage", "AuthError", "JobFailed"]  # failed runs' pickled exceptions
    storage = Path(str(get_current_settings().results.local_storage_path))
    if not storage.is_relative_to(Path(str(PREFECT_HOME.value()))) and storage.is_dir():
        read_files(home, storage)
    files = Place("test folder (local archives, prompt files)")
    read_files(files, tmp_path)
    files.evidence = [*(t for t in prompts if " on s3" not in t), "_jobs", "_results", "parents"]
    s3 = Place("S3 archive")
    read_s3(s3, s3_base, s3_options)
    s3.evidence = [f"{run} pipeline via gptimage2ai on s3", "_jobs", "_results"]
    cli_output.evidence = [
        *(f"created    {b}" for b in cli_blocks),
        "batch summary",
        str(cli_archive),
        "Traceback (most recent call last)",
        "error: AuthError: ",
    ]
    out, err = capfd.readouterr()
    in_process = Place("in-process output (console and log records)")
    in_process.add("stdout", out)
    in_process.add("stderr", err)
    in_process.add("log records", caplog.text)
    in_process.add("raised errors", "\n".join(f"{e!s}\n{e!r}" for e in errors))
    in_process.evidence = [*failures, f"{run} daily posters", "HTTP Request: POST"]

    places = [db, home, files, s3, cli_output, in_process, *api.values()]
    report = "\n".join(f"{p.name}: {len(p.read)} item(s), {p.size} bytes" for p in places)
    unread = {p.name: p.missing_evidence() for p in places if p.missing_evidence()}
    read_there = {p.name: sorted({w for w, _ in p.read})[:60] for p in places if p.name in unread}
    assert not unread, f"places not read (evidence missing):\n{unread}\n{report}\n{read_there}"
    assert any(name.endswith((".db-wal", ".db")) for name, _ in db.read), report

    # Block documents read without secrets show every secret field obfuscated.
    docs = [json.loads(d) for _, d in api["block documents"].read]
    ours = {d["name"]: d["data"] for d in docs if d["name"] in all_blocks}
    secret_fields = ("api_key", "api_secret", "secret_storage_options")
    shown = {
        (name, f): v
        for name, data in ours.items()
        for f, v in data.items()
        if f in secret_fields and v is not None
    }
    # 6 keys in-process and 6 by the CLI, 3 in wrong-key blocks, the S3 block's options.
    assert set(ours) == set(all_blocks) and len(shown) == 6 + 6 + 3 + 1, sorted(shown)
    assert set(shown.values()) == {OBFUSCATED}, shown
    leaks = [hit for p in places for hit in p.leaks(NEEDLES)]
    assert leaks == [], "\n".join([*leaks, "", "read:", report])
