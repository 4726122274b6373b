"""The `gptimg` command.

Settings that must be in place before Prefect is imported are set first: the embedded server
needs more than Prefect's default 20 s to create its database on a fresh machine, and with no
internet its telemetry only logs errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import asyncio
import sys
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, help="GPT Image 2 pipelines on Prefect.")


@app.command()
def demo(
    archive: str = typer.Option("gptimg-archive", help="Folder or fsspec URL to archive into."),
    prompt: str = typer.Option(
        "poster of a lighthouse at dawn, headline 'OPEN DAY'", help="What to generate."
    ),
    edit_prompt: str = typer.Option("replace the sky with a storm", help="How to edit it."),
) -> None:
    """Generate → edit with a mask → archive, on the offline provider (no key needed)."""
    from .demo import run_demo

    result = asyncio.run(run_demo(archive, prompt, edit_prompt))
    for label, images in (("generated", result.generated), ("edited", result.edited)):
        for img in images:
            typer.echo(
                f"{label:>9}: {img.uri}  ({img.width}x{img.height}, sha256 {img.sha256[:12]})"
            )
    typer.echo(f"  sidecar: {result.edited[0].sidecar_uri}")
    typer.echo("Done. See the runs with `prefect server start` and open http://127.0.0.1:4200")


@app.command()
def providers() -> None:
    """The capability table of every provider (markdown)."""
    from .providers import capability_notes, capability_table

    typer.echo(capability_table())
    typer.echo("\nAssumed, not confirmed by the providers' documents:\n" + capability_notes())


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


__all__ = ["Path", "app", "main"]
