"""Serve the deployments of prefect.yaml from this machine, without a work pool.

    python deployments/serve.py            # runs until stopped; schedules fire from here
    python deployments/serve.py --list     # show what would be served

The schedules and parameters are read from deployments/prefect.yaml, so the two ways of
running stay the same. The names are not: each served deployment is `<name>-served`
(`daily-content/daily-content-served`), because stopping `serve` pauses the deployments it
serves, and a work-pool deployment of the same name (`prefect deploy`) would be paused with
them, its 06:00 schedule silently stopped. Served and pool deployments can live side by side.
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


#: What a served deployment's name ends with (never a work-pool deployment's name).
SERVED_SUFFIX = "-served"


def served_name(name: str) -> str:
    return f"{name}{SERVED_SUFFIX}"


def build() -> list[RunnerDeployment]:
    """One RunnerDeployment per entry of prefect.yaml, with its schedules and parameters."""
    spec = yaml.safe_load(SPEC.read_text())
    out = []
    for entry in spec["deployments"]:
        schedules = [
            Schedule(cron=s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
            for s in entry.get("schedules", [])
        ]
        parameters = dict(entry.get("parameters", {}))
        if isinstance(parameters.get("deployment"), str):  # distributed-batch's chunk runs
            parameters["deployment"] = served_name(parameters["deployment"])
        out.append(
            _flow(entry["entrypoint"]).to_deployment(
                name=served_name(entry["name"]),
                description=entry.get("description"),
                parameters=parameters,
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
