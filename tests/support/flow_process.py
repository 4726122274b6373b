"""Runs one flow in its own process, so a test can kill -9 it mid-run.

Usage: python -m tests.support.flow_process '<json>' with keys flow, provider, block (the fields
of a credentials block of that provider; without it `provider` is passed as given: saved block
names, a list of them for a route, a saved route), kwargs. Prints the archived URIs as JSON on
success.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def main(spec: dict[str, Any]) -> None:
    import gptimg_flows
    from gptimg_flows.blocks.credentials import CREDENTIAL_BLOCKS

    provider: Any = spec["provider"]
    if "block" in spec:  # a block of the named provider, made from these fields
        cls = next(c for c in CREDENTIAL_BLOCKS if c.provider_name == spec["provider"])
        provider = cls(**spec["block"])
    flow = getattr(gptimg_flows, spec["flow"])
    result = await flow(provider=provider, **spec["kwargs"])
    images = result if isinstance(result, list) else result.images
    print(json.dumps([i.uri for i in images]))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
