"""Keys and records: what makes a paid submit happen once. A request's key, its job record
(written before and after the paid call), its result record and the images it points at, all
in the archive every worker reaches. No Prefect.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gptimg_flows.archive.layout import STAGING_MARK, job_rel, result_rel, staging_dir
from gptimg_flows.archive.store import Archive
from gptimg_flows.archive.thumbnails import store_thumbnail
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


async def job_recorded(archive: Archive, key: str) -> bool:
    """A paid submit for this key is on record (a re-run resumes it: nothing new to pay)."""
    record = await asyncio.to_thread(archive.read_json, job_rel(key))
    return bool(record and record.get("job"))


async def archived_result(archive: Archive, key: str) -> list[ArchivedImage] | None:
    """The images a finished request already produced, if they are all still in the archive."""
    record = await asyncio.to_thread(archive.read_json, result_rel(key))
    if not record:
        return None
    images = [ArchivedImage.model_validate(i) for i in record.get("images", [])]
    present = await asyncio.gather(
        *(asyncio.to_thread(archive.fs.exists, _strip(archive, i.uri)) for i in images)
    )
    return images if images and all(present) else None


def _strip(archive: Archive, uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def read_or_claim(archive: Archive, key: str, submitting: dict[str, Any]) -> Any | None:
    """The key's job record, or (none yet) None after writing a "submitting" one: read and
    claim in one trip to a worker thread."""
    record = archive.read_json(job_rel(key))
    if record is None:
        claim(archive, key, submitting)
    return record


def claim(archive: Archive, key: str, submitting: dict[str, Any]) -> None:
    """Written before the paid call, so a lost answer is known to be possibly billed."""
    archive.write_json(job_rel(key), {**submitting, "started_at": datetime.now(UTC).isoformat()})


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
