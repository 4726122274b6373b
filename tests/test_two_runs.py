"""Two runs of one request at once (a deployment triggered twice, a schedule catching up, two
teams' batches with common rows): one pays, the other waits for its job and ends with the same
images. The claim on a key's job record is an exclusive create, on local disk and on S3."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from gptimg_flows import ImageArchive, batch_generate, generate_images
from gptimg_flows.archive.layout import job_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.engine.records import claim_alive, try_claim
from gptimg_flows.errors import DamagedRecord, SubmitUncertain

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_server")


def _block_fields(block: Any) -> dict[str, Any]:
    fields = {"base_url": block.base_url, "api_key": block.api_key.get_secret_value()}
    if hasattr(block, "api_secret"):
        fields["api_secret"] = block.api_secret.get_secret_value()
    return fields


def test_exclusive_create_on_local_disk_and_on_s3(
    tmp_path: Path, s3_archive: tuple[str, dict[str, Any]]
) -> None:
    url, options = s3_archive
    for archive in (Archive(str(tmp_path)), Archive(url, options)):
        first = try_claim(archive, "k" * 64, {"state": "submitting", "key": "k" * 64})
        second = try_claim(archive, "k" * 64, {"state": "submitting", "key": "k" * 64})
        assert first.owner is not None and second.owner is None
        assert second.record is not None and second.record["owner"] == first.owner
        assert claim_alive(second.record)
        assert archive.read_json(job_rel("k" * 64))["owner"] == first.owner


@pytest.mark.parametrize("name", ["scenario", "openai"])
async def test_two_runs_in_one_process_pay_once(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """Scenario (an async job) and OpenAI (a synchronous answer whose images are staged, then
    removed by whichever run archives first): both runs end with the same images."""
    emulator.configure(latency=0.3, submit_latency=1.5)
    block = provider_block(name)
    kwargs = {"prompt": "two runs, one bill", "archive": str(archive_dir), "size": "1024x1024"}
    first, second = await asyncio.gather(
        generate_images(provider=block, **kwargs), generate_images(provider=block, **kwargs)
    )
    assert len(emulator.ledger()["submissions"]) == 1
    assert [i.sha256 for i in first] == [i.sha256 for i in second]
    assert all(Path(i.uri).exists() for i in first)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scenario", "skillsvideo", "gptimage2ai", "openai"])
def test_two_processes_racing_on_ten_keys_pay_once_each(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """The issue's table row: two processes, ten request keys, slow submits. Before the
    exclusive claim, 3 runs in 10 paid twice and the others failed with SubmitUncertain."""
    emulator.configure(latency=0.5, submit_latency=2.0, render_mode="stamp")
    block = provider_block(name)
    spec = {
        "flow": "batch_generate",
        "provider": name,
        "block": _block_fields(block),
        "kwargs": {
            "prompts": [f"racing prompt {i}" for i in range(10)],
            "archive": str(archive_dir),
            "size": "1024x1024",
            "concurrency": 10,
        },
    }
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.flow_process", json.dumps(spec)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
    uris = [sorted(json.loads(out.decode().strip().splitlines()[-1])) for out, _ in outputs]
    assert len(uris[0]) == 10 and uris[0] == uris[1]
    paid = emulator.ledger()["submissions"]
    assert len(paid) == 10, f"{len(paid)} paid submissions for 10 requests"
    assert "SubmitUncertain" not in b"".join(err for _, err in outputs).decode()


async def test_a_dead_claim_is_still_reported_not_paid_again(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """A claim whose owner stopped renewing it (killed between claim and answer) may have been
    billed: Scenario cannot look the job up, so the run stops with SubmitUncertain."""
    block = provider_block("scenario")
    kwargs = {"prompt": "a dead claim", "archive": str(archive_dir), "size": "1024x1024"}
    await generate_images(provider=block, **kwargs)
    archive = Archive(str(archive_dir))
    [key] = [p.stem for p in (archive_dir / "_jobs").glob("*.json")]
    archive.delete(f"_results/{key}.json")
    stale = {
        "state": "submitting",
        "key": key,
        "provider": "scenario",
        "owner": "gone",
        "started_at": "2026-01-01T00:00:00+00:00",
        "lease_until": "2026-01-01T00:01:00+00:00",
    }
    archive.write_json(job_rel(key), stale)
    with pytest.raises(SubmitUncertain, match="answer was lost"):
        await generate_images(provider=block, **kwargs)
    assert len(emulator.ledger()["submissions"]) == 1


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (b'{"state": "submitted", "job": {"provider": "scen', "not readable JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"state": "submitted", "job": {"job_id": 7}}', "its job is not a job"),
    ],
)
async def test_a_damaged_job_record_names_its_file_and_the_fix(
    record: bytes, problem: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    block = provider_block("scenario")
    kwargs = {"prompt": "a damaged record", "archive": str(archive_dir), "size": "1024x1024"}
    await generate_images(provider=block, **kwargs)
    [path] = (archive_dir / "_jobs").glob("*.json")
    (archive_dir / "_results" / path.name).unlink()
    for sidecar in archive_dir.glob("images/*/*.json"):  # else the images are found from these
        sidecar.unlink()
    path.write_bytes(record)
    with pytest.raises(DamagedRecord) as caught:
        await generate_images(provider=block, **kwargs)
    message = str(caught.value)
    assert path.name in message and problem in message and "delete the file" in message
    assert "scen" not in message  # nothing read is quoted
    assert len(emulator.ledger()["submissions"]) == 1


async def test_a_batch_and_another_batch_with_common_rows_pay_once_per_row(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.3, submit_latency=1.0, render_mode="stamp")
    block = provider_block("skillsvideo")
    archive = ImageArchive(basepath=str(archive_dir))
    common = [f"common row {i}" for i in range(4)]
    a, b = await asyncio.gather(
        batch_generate(prompts=[*common, "only in a"], provider=block, archive=archive),
        batch_generate(prompts=["only in b", *common], provider=block, archive=archive),
    )
    assert not a.failures and not b.failures
    assert len(emulator.ledger()["submissions"]) == 6
    assert {i.sha256 for i in a.images[:4]} == {i.sha256 for i in b.images[1:]}


@pytest.mark.parametrize("name", ["openai", "scenario"])
async def test_a_deleted_result_record_is_rebuilt_from_the_sidecars_not_paid_again(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """The fix a DamagedRecord names for `_results/`: delete it. OpenAI's images came inline
    (their staged copies are gone once archived), so only the sidecars can find them."""
    block = provider_block(name)
    kwargs = {"prompt": "found again", "archive": str(archive_dir), "size": "1024x1024"}
    first = await generate_images(provider=block, **kwargs)
    [record] = (archive_dir / "_results").glob("*.json")
    record.write_bytes(b'{"key": "trunc')
    with pytest.raises(DamagedRecord, match=r"_results/.*delete it"):
        await generate_images(provider=block, **kwargs)
    record.unlink()
    again = await generate_images(provider=block, **kwargs)
    assert [i.sha256 for i in again] == [i.sha256 for i in first]
    if name == "openai":  # scenario's URLs still work: its recorded job is downloaded again
        assert all(i.from_archive for i in again)
    assert record.exists(), "the result record is written back"
    assert len(emulator.ledger()["submissions"]) == 1


def test_a_claim_whose_process_is_gone_on_this_machine_is_dead_at_once(tmp_path: Path) -> None:
    """A re-run right after a kill -9 need not wait out the 60 s lease: the owner's pid on
    this host is checked; elsewhere (another host) only the lease tells."""
    import socket

    archive = Archive(str(tmp_path))
    claim = try_claim(archive, "d" * 64, {"state": "submitting", "key": "d" * 64})
    assert claim.record is not None and claim_alive(claim.record)  # this process: alive
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = {**claim.record, "pid": int(finished.stdout)}
    assert not claim_alive(dead)
    elsewhere = {**dead, "host": socket.gethostname() + "-elsewhere"}
    assert claim_alive(elsewhere), "another machine's claim lives until its lease ends"
