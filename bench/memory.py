"""One memory probe in a fresh process: 20 concurrent 25 MB images downloaded and archived.

Prints one JSON line: {"rss_growth_mb": ..., "images": ...}: the highest RSS sampled during
the run minus the RSS just before it, after a warm-up run so imports and Prefect's machinery
are in the baseline, not in the growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import threading
import uuid
from typing import Any

SIZE = 25 * 2**20
COUNT = 20


def rss_mb() -> float:
    """Current resident set size, from /proc (Linux)."""
    pages = int(open("/proc/self/statm").read().split()[1])  # noqa: SIM115
    return pages * resource.getpagesize() / 2**20


class PeakSampler(threading.Thread):
    """Samples RSS every 5 ms: `ru_maxrss` is a lifetime peak, which imports may already hold."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_mb()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_mb())


async def main(target: str, s3_endpoint: str | None) -> None:
    from gptimg_flows import ImageArchive, RunwareCredentials, batch_generate
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS

    archive: Any
    if target == "s3":
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        ).create_bucket(Bucket=bucket)
        options = {
            "key": "k",
            "secret": "s",
            "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
        }
        archive = ImageArchive(basepath=f"s3://{bucket}/bench", storage_options=options)
    else:
        archive = tempfile.mkdtemp(prefix="bench-memory-")
    config = EmulatorConfig(latency=0.2, render_mode="stamp", url_ttl=None, pad_to_bytes=SIZE)
    with EmulatorProcess(config) as emu:
        block = RunwareCredentials(
            api_key=str(EMULATOR_KEYS["runware"]), base_url=emu.base_url("runware")
        )
        emu.client.configure(pad_to_bytes=None)
        await batch_generate(
            prompts=["warm-up"],
            provider=block,
            archive=archive,
            size="256x256",
            output_format="png",
        )
        emu.client.configure(pad_to_bytes=SIZE)
        before = rss_mb()
        sampler = PeakSampler()
        sampler.start()
        result = await batch_generate(
            prompts=[f"big {i}" for i in range(COUNT)],
            provider=block,
            archive=archive,
            concurrency=COUNT,
            size="256x256",
            output_format="png",
        )
        sampler.done.set()
        sampler.join()
        after = sampler.peak
    sizes = {i.size_bytes for i in result.images}
    assert min(sizes) >= SIZE * 0.95, sizes
    print(
        json.dumps(
            {
                "rss_growth_mb": after - before,
                "images": len(result.images),
                "failures": len(result.failures),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", choices=["local", "s3"], default="local")
    parser.add_argument("--s3-endpoint")
    args = parser.parse_args()
    asyncio.run(main(args.target, args.s3_endpoint))
