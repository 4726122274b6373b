"""Save the gptimg credentials blocks from the environment variables you already have.

    python blocks/from_env.py [--archive URL] [--prefix NAME]

Reads OPENAI_API_KEY, SCENARIO_SDK_API_KEY + SCENARIO_SDK_API_SECRET, RUNWARE_API_KEY,
SKILLS_VIDEO_API_KEY and GPTIMAGE2_API_KEY (plus optional OPENAI_BASE_URL,
SCENARIO_SDK_BASE_URL, RUNWARE_BASE_URL, SKILLS_VIDEO_BASE_URL, GPTIMAGE2_BASE_URL) and saves
one block per provider into the Prefect API in PREFECT_API_URL (or the local database). Safe to
re-run: unchanged blocks are not written. The same as `gptimg blocks create`; the logic lives in
gptimg_flows/blocks_env.py.
"""

from __future__ import annotations

import os
import sys

# As in the `gptimg` command: set before Prefect is imported (first-run database creation
# outlasts Prefect's default startup timeout; no telemetry offline).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from gptimg_flows.blocks.from_env import main

if __name__ == "__main__":
    sys.exit(main())
