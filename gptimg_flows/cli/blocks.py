"""`gptimg blocks`: register the block types, save credentials blocks from env vars."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING

import typer

from gptimg_flows.cli.app import (
    blocks_app,
)
from gptimg_flows.cli.console import (
    run_command,
)
from gptimg_flows.cli.errors import (
    exit_on_error,
    redact,
)

if TYPE_CHECKING:
    pass


@blocks_app.command("register")
def blocks_register() -> None:
    """Register gptimg's block types with the Prefect API, so the UI can create them.

    The same as `prefect block register -m gptimg_flows`, in-process.
    """
    with exit_on_error():
        from prefect.blocks.core import Block

        import gptimg_flows

        found = [cls for _, cls in inspect.getmembers(gptimg_flows) if Block.is_block_class(cls)]

        async def work() -> None:
            for cls in found:
                await cls.aregister_type_and_schema()

        run_command(work, status="registering block types…")
        typer.echo(f"registered {len(found)} block type(s):")
        for cls in found:
            typer.echo(f"  {cls.get_block_type_name()}  ({cls.get_block_type_slug()})")


@blocks_app.command("create")
def blocks_create(
    archive: str | None = typer.Option(
        None, "--archive", help="Also save an ImageArchive block (`archive`) for this URL."
    ),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Name the blocks <prefix>-<provider> instead of <provider>."
    ),
) -> None:
    """Save a credentials block for each provider whose env vars are set.

    Reads OPENAI_API_KEY, SCENARIO_SDK_API_KEY + SCENARIO_SDK_API_SECRET, RUNWARE_API_KEY,
    SKILLS_VIDEO_API_KEY, GPTIMAGE2_API_KEY, and optional OPENAI_BASE_URL,
    SCENARIO_SDK_BASE_URL, RUNWARE_BASE_URL, SKILLS_VIDEO_BASE_URL, GPTIMAGE2_BASE_URL.
    Idempotent (unchanged blocks are not rewritten); never prints a key.
    """
    with exit_on_error():
        from gptimg_flows.blocks.from_env import save_blocks_from_env

        report = run_command(
            lambda: save_blocks_from_env(os.environ, prefix=prefix, archive=archive),
            status="saving blocks…",
        )
        for line in report.lines():
            typer.echo(redact(line))
