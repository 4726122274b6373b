"""The `gptimg` command as a user runs it: a subprocess talking to a real Prefect API server,
the offline provider (or the emulator through a saved block) and a temporary archive."""

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
from typer.testing import CliRunner

from gptimg_flows.blocks.from_env import SOURCES
from gptimg_flows.cli import app
from gptimg_flows.providers import capability_table
from gptimg_flows.testing.config import EMULATOR_KEYS

from .support.images import png_file, sky_mask

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_server")

#: The variables blocks_env reads: stripped from the child's environment, so a developer's
#: real keys are never used or printed by these tests.
_OURS = {var for s in SOURCES for _, var in s.secrets} | {s.base_url_var for s in SOURCES}


def gptimg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in _OURS}
    base["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return subprocess.run(
        [sys.executable, "-m", "gptimg_flows.cli", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_generate_prints_the_archived_path(archive_dir: Path) -> None:
    done = gptimg("generate", "a lighthouse", "--size", "256x256", "--archive", str(archive_dir))
    assert done.returncode == 0, done.stderr
    uri = done.stdout.split()[0]
    assert uri.startswith(str(archive_dir)) and Path(uri).is_file()
    assert Path(uri).with_suffix(".json").is_file()
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr


def test_edit_with_a_mask_records_the_input_as_parent(archive_dir: Path, tmp_path: Path) -> None:
    image, mask = png_file(tmp_path / "in.png"), sky_mask(tmp_path / "mask.png")
    done = gptimg(
        "edit",
        str(image),
        "stormy sky",
        "--mask",
        str(mask),
        "--archive",
        str(archive_dir),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)
    assert Path(record["uri"]).is_file() and record["width"] == 256
    sidecar = json.loads(Path(record["sidecar_uri"]).read_text())
    assert record["parents"] and sidecar["parents"] == record["parents"]


def test_batch_reports_a_bad_line_in_the_summary_and_exits_0(
    archive_dir: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a cat"}\n{"prompt": "a dog", "size": "banana"}\n'
        '{"prompt": "a bird", "size": "512x512"}\n'
    )
    done = gptimg("batch", str(prompts), "--size", "256x256", "--archive", str(archive_dir))
    assert done.returncode == 0, done.stderr
    rows = {
        cells[0]: cells[1]
        for line in done.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2
    }
    assert rows["items"] == "3" and rows["images"] == "2" and rows["failures"] == "1"
    assert rows["archived under"] == str(archive_dir) and rows["spent this run"] == "0 usd"
    assert "a dog" in done.stdout and "size 'banana'" in done.stdout
    assert "3/3" in done.stderr  # the progress bar's last state
    assert "Traceback" not in done.stdout + done.stderr


def test_batch_where_every_item_fails_exits_1_after_the_summary(
    archive_dir: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a", "size": "banana"}\n{"prompt": "b", "quality": "ultra"}\n')
    done = gptimg("batch", str(prompts), "--archive", str(archive_dir))
    assert done.returncode == 1
    assert "failures" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: RowsFailed: all 2 row(s)")


def test_strict_batch_with_one_failed_item_exits_1_after_the_summary(
    archive_dir: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "size": "banana"}\n')
    done = gptimg(
        "batch", str(prompts), "--size", "256x256", "--archive", str(archive_dir), "--strict"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failures" in done.stdout and len(list(archive_dir.glob("images/*/*.png"))) == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: RowsFailed: 1 of 2 row(s)")


def test_bad_size_exits_2_with_one_line_and_no_traceback(archive_dir: Path) -> None:
    done = gptimg("generate", "x", "--size", "banana", "--archive", str(archive_dir))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: InvalidRequest: size 'banana' is neither `WxH` (e.g. 1024x1536), `W:H` "
        "(e.g. 16:9) nor auto"
    ]


def test_debug_shows_the_traceback(archive_dir: Path) -> None:
    result = CliRunner().invoke(
        app, ["--debug", "generate", "x", "--size", "banana", "--archive", str(archive_dir)]
    )
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: InvalidRequest: size 'banana'")


def test_unknown_provider_is_bad_input(archive_dir: Path) -> None:
    done = gptimg("generate", "x", "--provider", "no-such-block", "--archive", str(archive_dir))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        line for line in done.stderr.splitlines() if line.startswith("error: InvalidRequest: ")
    ]
    assert "no-such-block" in done.stderr and "Traceback" not in done.stderr


def test_providers_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["providers"])
    assert result.exit_code == 0
    assert capability_table() in result.stdout


def test_blocks_register_registers_every_block_type() -> None:
    result = CliRunner().invoke(app, ["blocks", "register"])
    assert result.exit_code == 0, result.output
    assert "registered 7 block type(s)" in result.stdout
    assert "gptimg-scenario-credentials" in result.stdout
    assert "gptimg-provider-route" in result.stdout


def test_blocks_create_saves_blocks_without_printing_a_key_and_generate_uses_them(
    emulator: Any, archive_dir: Path
) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    fake = {"OPENAI_API_KEY": "sk-FAKE-cli-openai-a1b2c3"}
    runware = {
        "RUNWARE_API_KEY": str(EMULATOR_KEYS["runware"]),
        "RUNWARE_BASE_URL": emulator.base_url("runware"),
    }
    env = {**fake, **runware}
    args = ["blocks", "create", "--prefix", prefix, "--archive", str(archive_dir)]
    done = gptimg(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert f"created    {prefix}-openai" in done.stdout
    assert "GPT Image OpenAI Credentials" in done.stdout and f"{prefix}-archive" in done.stdout
    assert "skipped" in done.stdout and "SCENARIO_SDK_API_KEY" in done.stdout
    assert not [v for v in env.values() if v in done.stdout + done.stderr]

    unset: dict[str, str | None] = {var: None for var in _OURS}
    again = CliRunner().invoke(app, args, env=unset | env)
    assert again.exit_code == 0 and "created" not in again.stdout
    assert again.stdout.count("unchanged") == 3

    # The saved blocks are what --provider and --archive name.
    used = gptimg(
        "generate",
        "a saved block",
        "--provider",
        f"{prefix}-runware",
        "--archive",
        f"{prefix}-archive",
        "--size",
        "256x256",
    )
    assert used.returncode == 0, used.stderr
    assert used.stdout.startswith(str(archive_dir)) and "runware" in used.stdout
    assert len(emulator.ledger()["submissions"]) == 1
    assert not [v for v in env.values() if v in used.stdout + used.stderr]

    half_env = unset | {"SCENARIO_SDK_API_KEY": "scn-FAKE-cli-k-77"}
    half = CliRunner().invoke(app, ["blocks", "create"], env=half_env)
    assert half.exit_code == 2
    assert half.stderr.startswith("error: IncompleteEnvironment: ")
    assert "scn-FAKE-cli-k-77" not in half.output


async def test_the_progress_bar_follows_the_flow_as_items_finish(
    archive_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items that take 0.7 s each, one at a time: the bar must show an item done before the
    last one is, read from the flow run's progress artifact (not faked at the end)."""
    import asyncio

    from rich.progress import Progress

    from gptimg_flows.cli.batch import _batch_with_progress
    from gptimg_flows.providers.offline import OfflineProvider

    original = OfflineProvider.submit

    async def slow(self: OfflineProvider, request: Any, inputs: Any, key: str) -> Any:
        await asyncio.sleep(0.7)
        return await original(self, request, inputs, key)

    seen: list[Any] = []
    shown = Progress.update

    def update(self: Progress, task_id: Any, **kw: Any) -> None:
        seen.append(kw.get("completed"))
        shown(self, task_id, **kw)

    monkeypatch.setattr(OfflineProvider, "submit", slow)
    monkeypatch.setattr(Progress, "update", update)
    kwargs = {
        "prompts": [f"slow item {i} {uuid.uuid4().hex}" for i in range(3)],
        "provider": "offline",
        "archive": str(archive_dir),
        "concurrency": 1,
        "size": "64x64",
    }
    result, where = await _batch_with_progress(kwargs, total=3)

    assert len(result.images) == 3 and where == str(archive_dir)
    values = [v for v in seen if v is not None]
    assert values[-1] == 3
    assert any(0 < v < 3 for v in values), values


def _flow_runs() -> int:
    import httpx

    response = httpx.post(f"{PREFECT_API_URL.value()}/flow_runs/count", json={}, timeout=30)
    response.raise_for_status()
    return int(response.json())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["generate", "x", "-a", "foo://bar"], "archive: cannot open 'foo://bar'"),
        (["generate", "x", "--timeout", "-1"], "timeout_seconds=-1; it must be a positive"),
        (["generate", "x", "--compression", "80"], "output_compression applies only to"),
        (["generate", "x", "--size", "17:3"], "offline needs an aspect ratio between 1:3 and 3:1"),
        (["batch", "no-such-file.jsonl"], "prompts: no such file"),
        (["batch", "{prompts}", "--template", "{{nom}}"], "prompt_template: no row has a column"),
        (["edit", "{image}", "x", "--size", "1000x1000"], "multiples of 16"),
        (["batch", "{prompts}", "--refresh-rows", "0,4"], "refresh_rows: row(s) 4 are not in"),
        (["batch", "{prompts}", "--refresh-rows", "first"], "give row numbers (from 0)"),
        (["generate", "x", "--text-check", "maybe"], "text_check='maybe'; it is 'off'"),
    ],
    ids=[
        "archive-protocol",
        "timeout",
        "compression-png",
        "ratio",
        "prompt-file",
        "template",
        "edit-size",
        "refresh-rows-range",
        "refresh-rows-text",
        "text-check",
    ],
)
def test_typos_are_refused_before_any_flow_run(
    args: list[str], expected: str, tmp_path: Path, archive_dir: Path
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a kite", "name": "kite"}\n')
    image = png_file(tmp_path / "in.png")
    filled = [a.format(prompts=prompts, image=image) for a in args]
    before = _flow_runs()

    done = gptimg(*filled, *(["--archive", str(archive_dir)] if "-a" not in args else []))

    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: InvalidRequest: "), done.stderr
    assert expected in lines[0], lines[0]
    assert _flow_runs() == before, "a typo created a flow run"


def test_batch_prints_each_rows_image_path_in_input_order(
    archive_dir: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "products.csv"
    prompts.write_text(
        "sku,prompt,size\nA-1,a large teapot,1024x1024\nB-2,a small teapot,64x64\n"
        "C-3,a small cup,64x64\n"
    )
    done = gptimg("batch", str(prompts), "--archive", str(archive_dir), "--concurrency", "3")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("row ")]
    assert [(r[1], r[3]) for r in rows] == [
        ("0", "(sku=A-1)"),
        ("1", "(sku=B-2)"),
        ("2", "(sku=C-3)"),
    ]
    for r in rows:
        assert Path(r[2]).is_file() and json.loads(Path(r[2]).with_suffix(".json").read_text())[
            "extra"
        ] == {"sku": r[3][5:-1]}
    as_json = json.loads(
        gptimg("batch", str(prompts), "--archive", str(archive_dir), "--json").stdout
    )
    assert [(i["row"], i["extra"]["sku"]) for i in as_json["images"]] == [
        (0, "A-1"),
        (1, "B-2"),
        (2, "C-3"),
    ]


async def test_estimate_and_dry_run_price_without_running_or_paying(
    emulator: Any, tmp_path: Path, archive_dir: Path
) -> None:
    from gptimg_flows import OpenAIImageCredentials

    name = f"est-openai-{uuid.uuid4().hex[:6]}"
    await OpenAIImageCredentials(
        api_key=str(EMULATOR_KEYS["openai"]), base_url=emulator.base_url("openai")
    ).asave(name)
    one = gptimg(
        "estimate", "a red kite", "-p", name, "--size", "1024x1536", "--quality", "medium", "--json"
    )
    assert one.returncode == 0, one.stderr
    data = json.loads(one.stdout)
    assert data["basis"] == ["token table"]
    assert data["total"]["usd"] == pytest.approx((3 * 5 + 1584 * 30) / 1e6)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red kite"}\n{"prompt": "a blue kite", "n": 2}\n')
    before = _flow_runs()
    dry = gptimg(
        "batch",
        str(prompts),
        "-p",
        name,
        "--size",
        "1024x1024",
        "--quality",
        "low",
        "--archive",
        str(archive_dir),
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    assert "for 2 request(s), 3 image(s); nothing was run or paid" in dry.stdout, dry.stdout
    assert "(token table)" in dry.stdout
    assert _flow_runs() == before and emulator.ledger()["requests"] == {}
    assert not archive_dir.exists()


def test_empty_prompts_are_refused_before_the_run_naming_their_rows(tmp_path: Path) -> None:
    prompts = tmp_path / "rows.csv"
    prompts.write_text("prompt,sku\na teapot,T-1\n,T-2\n  ,T-3\n")
    result = CliRunner().invoke(app, ["batch", str(prompts), "--archive", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    assert "row(s) 1, 2 have an empty prompt" in result.output
    assert not (tmp_path / "a").exists(), "nothing ran"


def test_an_unknown_price_estimate_reads_as_a_sentence() -> None:
    from gptimg_flows.spend.prices import CostEstimate, Price

    unknown = Price(amount=None, unit="credits", basis="unknown")
    known = Price(amount=0.04, unit="usd", basis="block-set price")
    assert CostEstimate.of([(unknown, 1)]).text() == (
        "unknown (no documented price: set `price_per_image` on the block)"
    )
    assert CostEstimate.of([(known, 1), (unknown, 1)]).text() == (
        "0.04 usd (block-set price) for 1 request(s), and unknown for the other 1"
    )


@pytest.mark.usefixtures("prefect_server")
def test_a_price_needs_no_saved_key_and_a_mistyped_provider_gets_a_suggestion() -> None:
    """`-p openai` with no block of that name prices from OpenAI's token table; `-p scenari`
    says what is saved, suggests the near match and names `gptimg blocks create`."""
    priced = gptimg(
        "estimate", "a lighthouse", "-p", "openai", "--size", "1024x1024", "--quality", "high"
    )
    assert priced.returncode == 0, priced.stderr
    assert "usd (token table)" in priced.stdout and "nothing was run or paid" in priced.stdout
    runware = gptimg("estimate", "a lighthouse", "-p", "runware", "--size", "1024x1024")
    assert runware.returncode == 0 and "unknown (no documented price" in runware.stdout
    typo = gptimg("estimate", "a lighthouse", "-p", "scenari")
    assert typo.returncode == 2
    assert "Did you mean 'scenario'?" in typo.stderr and "gptimg blocks create" in typo.stderr


def test_the_image_count_option_is_shown_once_with_a_word_for_it() -> None:
    shown = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "120"}).output
    assert "--count" in shown and "-n" in shown and "--n " not in shown


@pytest.mark.usefixtures("prefect_server")
def test_an_archive_block_a_deployment_would_refuse_is_warned_about_when_saved(
    tmp_path: Path,
) -> None:
    prefix = f"warn{uuid.uuid4().hex[:8]}"
    done = gptimg("blocks", "create", "--prefix", prefix, "--archive", str(tmp_path / "arch"))
    assert done.returncode == 0, done.stderr
    assert f"warning: the ImageArchive block '{prefix}-archive'" in done.stdout, done.stdout
    assert (
        "under the temporary directory" in done.stdout
        and "a deployment's run will refuse" in done.stdout
    )
    shared = gptimg("blocks", "create", "--prefix", prefix, "--archive", "s3://acme/gptimg")
    assert shared.returncode == 0 and "warning" not in shared.stdout, shared.stdout


def test_estimate_starts_no_prefect_server_when_nothing_can_be_saved(tmp_path: Path) -> None:
    """#33: pricing `-p openai` is arithmetic; with no API configured and no database yet,
    no embedded server is started (20-40 s on a fresh machine) to look for saved blocks."""
    home = tmp_path / "fresh-home"
    env = {k: v for k, v in os.environ.items() if k not in _OURS and k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptimg_flows.cli",
            "--debug",
            "estimate",
            "a kite",
            "-p",
            "openai",
            "--size",
            "1024x1024",
            "--quality",
            "high",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.startswith("estimate: 0.")
        and "usd" in done.stdout
        and "nothing was run or paid" in done.stdout
    )
    assert "temporary server" not in done.stderr, done.stderr
    assert not (home / "prefect.db").exists(), "a Prefect database was created to do arithmetic"


def test_mistakes_are_caught_before_any_flow_run_exists(archive_dir: Path, tmp_path: Path) -> None:
    """#33: a provider typo, a size the saved block's provider cannot make and a mask that
    does not fit its image used to leave a Failed flow run behind, though nothing was paid."""
    image, mask = png_file(tmp_path / "in.png"), sky_mask(tmp_path / "m.png", (128, 128))
    before = _flow_runs()
    typo = gptimg("generate", "a kite", "-p", "no-such-block", "--archive", str(archive_dir))
    assert typo.returncode == 2 and "no saved credentials block or route" in typo.stderr
    gptimg("blocks", "create", "--prefix", "mistake", env={"RUNWARE_API_KEY": "k"})
    size = gptimg("generate", "a kite", "-p", "mistake-runware", "--size", "1000x1000")
    assert size.returncode == 2 and "multiples of 16" in size.stderr, size.stderr
    fit = gptimg("edit", str(image), "sky", "--mask", str(mask), "--archive", str(archive_dir))
    assert fit.returncode == 2 and "mask" in fit.stderr, fit.stderr
    assert _flow_runs() == before, "a flow run was created for a mistake"


def test_help_shows_flags_as_flags_and_wraps_between_words() -> None:
    """#33: on/off flags read `--strict <bool>` and help text wrapped inside narrow cells."""
    done = CliRunner().invoke(app, ["batch", "--help"], env={"COLUMNS": "100"})
    assert done.exit_code == 0, done.output
    assert "<bool>" not in done.output and "--strict" in done.output
    lines = done.output.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
