"""Keys and records: what makes a paid submit happen once. A request's key, its job record
(written before and after the paid call), its result record and the images it points at, all
in the archive every worker reaches. No Prefect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gptimg_flows.archive.layout import (
    STAGING_MARK,
    job_rel,
    record_fix,
    result_rel,
    staging_dir,
)
from gptimg_flows.archive.store import Archive
from gptimg_flows.archive.thumbnails import store_thumbnail
from gptimg_flows.errors import DamagedRecord
from gptimg_flows.media.download import DownloadedImage
from gptimg_flows.models import (
    ArchivedImage,
    ImageRequest,
    Job,
    JobStatus,
    canonical_json,
)
from gptimg_flows.providers.base import Provider

KEY_VERSION = 1


def request_key(
    provider: Provider, request: ImageRequest, input_digests: Sequence[str], slot: str
) -> str:
    """The idempotency key of one paid submit. No credentials, no base URL: only what is asked."""
    payload = {
        "v": KEY_VERSION,
        "provider": provider.name,
        "model": provider.capabilities.model,
        "request": request.fingerprint(),
        "inputs": list(input_digests),
        "slot": slot,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def route_key(request: ImageRequest, input_digests: Sequence[str], slot: str) -> str:
    """The idempotency key of one request sent through a route: the same whichever member
    makes it, so a re-run finds its job or images without knowing which one did, and one
    claim stops two members from both being paid for it."""
    payload = {
        "v": KEY_VERSION,
        "route": True,
        "request": request.fingerprint(),
        "inputs": list(input_digests),
        "slot": slot,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def member_of_record(record: Any) -> str | None:
    """The route member a key's job record (or claim) names: where its request stays."""
    if not isinstance(record, dict):
        return None
    job = record.get("job")
    held_by = job.get("member") if isinstance(job, dict) else record.get("member")
    return held_by if isinstance(held_by, str) else None


async def job_recorded(archive: Archive, key: str) -> bool:
    """A paid submit for this key is on record (a re-run resumes it: nothing new to pay)."""
    record = await asyncio.to_thread(archive.read_json, job_rel(key))
    return isinstance(record, dict) and bool(record.get("job"))


async def archived_result(archive: Archive, key: str) -> list[ArchivedImage] | None:
    """The images a finished request already produced, if they are all still in the archive."""
    return await asyncio.to_thread(read_result, archive, key)


async def archived_under(archive: Archive, keys: Sequence[str]) -> list[ArchivedImage] | None:
    """The images of the first of `keys` whose request is archived (a route's request may be
    recorded under its route key or, made before the route, a member's own)."""
    for key in keys:
        if found := await archived_result(archive, key):
            return found
    return None


def read_result(archive: Archive, key: str) -> list[ArchivedImage] | None:
    """`archived_result` in the calling thread: the record, then each image's existence, in
    one trip (what a scan of thousands of keys runs on a pool of its own)."""
    record = archive.read_json(result_rel(key))
    if not record:
        return None
    try:
        if not isinstance(record, dict) or not isinstance(record.get("images", []), list):
            raise ValueError("it is not an object with a list of images")
        images = [ArchivedImage.model_validate(i) for i in record.get("images", [])]
    except ValueError as exc:  # pydantic's ValidationError is one
        problem = str(exc).splitlines()[0]
        raise DamagedRecord(
            f"{archive.uri(result_rel(key))}: {problem}. {record_fix(result_rel(key))}"
        ) from None
    present = images and all(archive.fs.exists(_strip(archive, i.uri)) for i in images)
    return images if present else None


def rebuilt_result(archive: Archive, key: str) -> list[ArchivedImage] | None:
    """The images a request produced, found again from their sidecars when its result record
    is gone (deleted because it was damaged): written back, so the next look is one read.
    Blocking, and a scan of the archive: only for a request whose job ended but whose result
    cannot be read any other way (its outputs are gone from the provider or the staging)."""
    found = [
        ArchivedImage.model_validate(s) for s in archive.sidecars() if s.get("request_key") == key
    ]
    if not found or not all(archive.fs.exists(_strip(archive, i.uri)) for i in found):
        return None
    found.sort(key=lambda i: i.uri)
    job_id = found[0].job_id
    images = [i.model_dump(mode="json") for i in found]
    archive.write_json(result_rel(key), {"key": key, "job_id": job_id, "images": images})
    return found


def _strip(archive: Archive, uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


#: A claim's owner renews it every CLAIM_RENEW_SECONDS while its paid call is in flight; a
#: claim not renewed for CLAIM_LEASE_SECONDS belongs to an owner that died between the claim
#: and the answer (its submit may have been billed: reported, never paid again blindly).
CLAIM_LEASE_SECONDS = 60.0
CLAIM_RENEW_SECONDS = 15.0


@dataclass(frozen=True)
class ClaimAttempt:
    """What a claim found: ours (`owner` set, the record we wrote), or another's record."""

    owner: str | None
    record: dict[str, Any] | None


def try_claim(archive: Archive, key: str, submitting: dict[str, Any]) -> ClaimAttempt:
    """Claim the key's paid submit with an exclusive create, so of two runs of one request
    exactly one pays; the other gets the record it lost to (None if that vanished since)."""
    owner = uuid.uuid4().hex
    record = {**submitting, "owner": owner, "started_at": _now().isoformat()}
    record.update(host=socket.gethostname(), pid=os.getpid())
    record["lease_until"] = (_now() + timedelta(seconds=CLAIM_LEASE_SECONDS)).isoformat()
    if archive.create_json(job_rel(key), record):
        return ClaimAttempt(owner, record)
    return ClaimAttempt(None, archive.read_json(job_rel(key)))


def renew_claim(archive: Archive, key: str, record: dict[str, Any]) -> None:
    """Push our claim's lease on: its owner is alive and its paid call still in flight."""
    lease = (_now() + timedelta(seconds=CLAIM_LEASE_SECONDS)).isoformat()
    archive.write_json(job_rel(key), {**record, "lease_until": lease})


def end_claim(archive: Archive, key: str, record: dict[str, Any]) -> None:
    """Our paid call ended without a job we could record (its answer lost or unreadable):
    the claim stays, as evidence it may have been billed, but no one waits on it any more."""
    archive.write_json(job_rel(key), {**record, "lease_until": _now().isoformat()})


def claim_alive(record: dict[str, Any]) -> bool:
    """A "submitting" claim whose owner renewed it within its lease (a record from before
    leases existed has none: its owner is taken as gone, as it was then). An owner on this
    machine whose process is gone is dead at once: a re-run right after a crash need not wait
    out the lease."""
    try:
        lease = datetime.fromisoformat(str(record["lease_until"]))
    except (KeyError, ValueError):
        return False
    if record.get("state") != "submitting" or lease <= _now():
        return False
    return not (record.get("host") == socket.gethostname() and _gone(record.get("pid")))


def _gone(pid: object) -> bool:
    """True when `pid` names no process on this machine (False when unsure)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by someone else
        return False
    return False


@contextlib.asynccontextmanager
async def held_claim(archive: Archive, key: str, record: dict[str, Any]) -> AsyncIterator[None]:
    """Renew the claim while the body (the paid call) runs; on exit, no renewal is in flight,
    so what the owner writes next (the job, or the claim's removal) is the last word."""
    stop = asyncio.Event()

    async def renew() -> None:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), CLAIM_RENEW_SECONDS)
                return
            except TimeoutError:
                await asyncio.to_thread(renew_claim, archive, key, record)

    renewing = asyncio.create_task(renew())
    try:
        yield
    finally:
        stop.set()
        await renewing


def _now() -> datetime:
    return datetime.now(UTC)


async def record_job(archive: Archive, job: Job) -> None:
    await asyncio.to_thread(
        archive.write_json,
        job_rel(job.key),
        {"state": "submitted", "job": job.model_dump(mode="json")},
    )


async def write_images(
    images: list[DownloadedImage],
    archive: Archive,
    key: str,
    job: Job,
    status: JobStatus,
    prompt: str,
    parents: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    row: int | None = None,
) -> tuple[list[ArchivedImage], list[tuple[str, str]]]:
    """Each image written once (content-addressed) with its sidecar, then the request's
    result record: the archived images, and the previews that could not be made."""
    cost_each = (status.cost / len(images)) if status.cost is not None and images else None
    out = [
        ArchivedImage(
            uri=archive.uri(Archive.image_rel(image.sha256, image.mime)),
            sidecar_uri=archive.uri(Archive.sidecar_rel(image.sha256)),
            sha256=image.sha256,
            mime=image.mime,
            width=image.width,
            height=image.height,
            size_bytes=image.size_bytes,
            provider=job.provider,
            model=job.model,
            prompt=prompt,
            member=job.member,
            job_id=job.job_id,
            seed=image.seed,
            cost=cost_each,
            cost_unit=status.cost_unit,
            request_key=key,
            parents=list(parents or []),
            row=row,
            extra=dict(extra or {}),
        )
        for image in images
    ]
    staged = any(o.url and STAGING_MARK in o.url for o in status.outputs)
    # One trip to a worker thread for every write of the request: each trip costs the event
    # loop a handoff, and a batch makes thousands of them (bench/RESULTS.md).
    no_preview = await asyncio.to_thread(
        _write_archive, archive, images, out, key, job.job_id, staged
    )
    return out, no_preview


def _write_archive(
    archive: Archive,
    images: list[DownloadedImage],
    out: list[ArchivedImage],
    key: str,
    job_id: str,
    staged: bool,
) -> list[tuple[str, str]]:
    """Each image, its preview and sidecar, then the request's record: in that order, so a
    record always points at images that are there. Returns the previews that failed: a
    failure there costs a preview (made again when shown), never the paid image."""
    no_preview: list[tuple[str, str]] = []
    for image, meta in zip(images, out, strict=True):
        archive.put_file(image.path, Archive.image_rel(image.sha256, image.mime), image.mime)
        try:
            store_thumbnail(archive, image.sha256, image.path)
        except (OSError, ValueError) as exc:
            no_preview.append((image.sha256, str(exc)))
        archive.write_json(
            Archive.sidecar_rel(image.sha256), meta.model_dump(mode="json"), overwrite=False
        )
    archive.write_json(
        result_rel(key),
        {"key": key, "job_id": job_id, "images": [i.model_dump(mode="json") for i in out]},
    )
    for image in images:
        Path(image.path).unlink(missing_ok=True)
    if staged:
        archive.delete(staging_dir(key))
    return no_preview
