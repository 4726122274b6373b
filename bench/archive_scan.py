"""How a distributed batch looks up which of its rows are archived, on moto's S3 server
(issue 24): 20,000 result records and their images in one bucket.

    python bench/archive_scan.py              # 20,000 records
    python bench/archive_scan.py --n 2000     # a look

Two ways of reading them are timed on the same bucket, each in a fresh S3 filesystem:
- **before**: what distributed_batch did until now: a coroutine per key (64 at a time) each
  handing its record read, then each image's existence check, to the process's default thread
  pool (shared with everything else in the process: min(32, cores + 4) threads);
- **now**: `distributed.gather.archived_rows`: one trip per key (record and checks together)
  on the scan's own pool of ARCHIVE_READS threads, SCAN_WINDOW keys handed over at a time.
Reported: wall, the most threads alive at once, and the RSS growth. Appends to
bench/RESULTS-archive-scan.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory import rss_mb  # noqa: E402

RESULTS = HERE / "RESULTS-archive-scan.md"


class Sampler(threading.Thread):
    """The most threads alive and the highest RSS, sampled every 10 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.threads = threading.active_count()
        self.rss = rss_mb()
        self.base = self.rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.threads = max(self.threads, threading.active_count())
            self.rss = max(self.rss, rss_mb())


def populate(client: Any, bucket: str, prefix: str, n: int) -> dict[int, str]:
    """n result records, each naming one (tiny) image that exists."""
    keys = {i: hashlib.sha256(f"row {i}".encode()).hexdigest() for i in range(n)}

    def put(i: int) -> None:
        sha = hashlib.sha256(f"image {i}".encode()).hexdigest()
        rel = f"images/{sha[:2]}/{sha}.png"
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=b"\x89PNG tiny")
        image = {
            "uri": f"s3://{bucket}/{prefix}/{rel}",
            "sidecar_uri": f"s3://{bucket}/{prefix}/images/{sha[:2]}/{sha}.json",
            "sha256": sha,
            "mime": "image/png",
            "width": 16,
            "height": 16,
            "size_bytes": 9,
            "provider": "offline",
            "model": "bench",
            "prompt": f"row {i}",
            "request_key": keys[i],
        }
        record = {"key": keys[i], "job_id": f"job-{i}", "images": [image]}
        body = json.dumps(record).encode()
        client.put_object(Bucket=bucket, Key=f"{prefix}/_results/{keys[i]}.json", Body=body)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(n)))
    return keys


async def before(store: Any, keys: dict[int, str]) -> dict[int, Any]:
    """The scan as it was: 64 coroutines at a time on the default thread pool."""
    from gptimg_flows.archive.layout import result_rel
    from gptimg_flows.models import ArchivedImage

    gate = asyncio.Semaphore(64)

    async def one(key: str) -> list[ArchivedImage] | None:
        async with gate:
            record = await asyncio.to_thread(store.read_json, result_rel(key))
            if not record:
                return None
            images = [ArchivedImage.model_validate(i) for i in record["images"]]
            present = await asyncio.gather(
                *(asyncio.to_thread(store.fs.exists, i.uri.split("://", 1)[1]) for i in images)
            )
            return images if all(present) else None

    found = await asyncio.gather(*(one(k) for k in keys.values()))
    return {i: f for i, f in zip(keys, found, strict=True) if f}


async def now(store: Any, keys: dict[int, str]) -> dict[int, Any]:
    from gptimg_flows.distributed.gather import archived_rows

    return await archived_rows(store, keys)


def measure(name: str, run: Any, store_of: Any, keys: dict[int, str]) -> dict[str, Any]:
    store = store_of()
    sampler = Sampler()
    sampler.start()
    started = time.monotonic()
    found = asyncio.run(run(store, keys))
    wall = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    return {
        "how": name,
        "found": len(found),
        "wall": wall,
        "threads": sampler.threads,
        "rss_growth": sampler.rss - sampler.base,
    }


def _wait_up(endpoint: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(endpoint, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("moto's server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    import boto3
    from run import free_port

    from gptimg_flows.archive.store import Archive
    from gptimg_flows.distributed.gather import ARCHIVE_READS, SCAN_WINDOW

    port = free_port()
    # moto in a process of its own: its threads and CPU are not counted as the scan's
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    _wait_up(endpoint)
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        bucket = f"scan-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        started = time.monotonic()
        keys = populate(client, bucket, "archive", args.n)
        filled = time.monotonic() - started
        print(f"{args.n} records and images put in {filled:.0f} s", flush=True)
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            "skip_instance_cache": True,
        }

        def store_of() -> Archive:
            return Archive(f"s3://{bucket}/archive", storage_options=options)

        rows = []
        for name, run in (("before", before), ("now", now)):
            rows.append(measure(name, run, store_of, keys))
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(10)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {stamp}: {args.n} records on moto S3 (ARCHIVE_READS={ARCHIVE_READS}, "
        f"SCAN_WINDOW={SCAN_WINDOW}, {os.cpu_count()} cores)",
        "",
        "| scan | rows found | wall | threads at most | RSS growth |",
        "|---|---|---|---|---|",
        *(
            f"| {r['how']} | {r['found']} | {r['wall']:.1f} s | {r['threads']} | "
            f"{r['rss_growth']:.0f} MB |"
            for r in rows
        ),
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_results:
        with RESULTS.open("a") as fh:
            fh.write(section + "\n")


if __name__ == "__main__":
    main()
