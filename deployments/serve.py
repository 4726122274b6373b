"""Serve the deployments of prefect.yaml from this machine, without a work pool.

    python deployments/serve.py            # runs until stopped; schedules fire from here
    python deployments/serve.py --list     # show what would be served

The names, schedules and parameters are read from deployments/prefect.yaml, so the two ways
of running stay the same.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import yaml
from prefect import serve
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Schedule

SPEC = Path(__file__).with_name("prefect.yaml")


def _flow(entrypoint: str) -> Any:
    module, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module), name)


def build() -> list[RunnerDeployment]:
    """One RunnerDeployment per entry of prefect.yaml, with its schedules and parameters."""
    spec = yaml.safe_load(SPEC.read_text())
    out = []
    for entry in spec["deployments"]:
        schedules = [
            Schedule(cron=s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
            for s in entry.get("schedules", [])
        ]
        out.append(
            _flow(entry["entrypoint"]).to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                parameters=entry.get("parameters", {}),
                schedules=schedules,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="print the deployments and exit")
    args = parser.parse_args()
    deployments = build()
    if args.list:
        for d in deployments:
            crons = [s.schedule for s in d.schedules or [] if isinstance(s.schedule, CronSchedule)]
            when = ", ".join(f"{c.cron} ({c.timezone})" for c in crons) or "no schedule"
            print(f"{d.flow_name}/{d.name}: {when}")
        return
    serve(*deployments)


if __name__ == "__main__":
    main()
