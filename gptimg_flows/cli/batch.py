"""`gptimg batch`: a prompt file through `batch_generate`, with a progress bar read from the
flow run's own progress artifact, and a summary table."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptimg_flows.cli.app import (
    ARCHIVE_HELP,
    DRY_RUN_HELP,
    MAX_COST_HELP,
    PROVIDER_HELP,
    SIZE_HELP,
    app,
)
from gptimg_flows.cli.args import (
    EXPECTED_TEXT_HELP,
    TEXT_CHECK_HELP,
    archive_arg,
    precheck,
    print_rows_estimate,
    prompt_rows,
    provider_arg,
    remakes,
    source_arg,
    text_check_args,
    text_check_line,
)
from gptimg_flows.cli.console import (
    OPTIONS,
    Stop,
    run_command,
    stderr_console,
    stdout_console,
)
from gptimg_flows.cli.errors import (
    exit_on_error,
    redact,
    short_error,
)
from gptimg_flows.results import RowsFailed, cost_text

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from rich.progress import Progress, TaskID

    from gptimg_flows.flows import BatchResult


log = logging.getLogger(__name__)


@app.command()
def batch(
    prompts_file: str = typer.Argument(
        ..., help="JSONL (per-line fields: prompt, n, size, …), CSV or text; path or fsspec URL."
    ),
    provider: str = typer.Option("offline", "--provider", "-p", help=PROVIDER_HELP),
    archive: str | None = typer.Option(None, "--archive", "-a", help=ARCHIVE_HELP),
    concurrency: int = typer.Option(8, min=1, help="Requests in flight at once."),
    size: str | None = typer.Option(None, help=f"Default for items without one. {SIZE_HELP}"),
    quality: str | None = typer.Option(None, help="Default for items without one."),
    output_format: str | None = typer.Option(None, "--format", help="png, jpeg or webp."),
    template: str | None = typer.Option(
        None, "--template", help="Each row's prompt from its columns: 'shot of {name}, {style}'."
    ),
    refresh: bool = typer.Option(False, help="Pay for new images even if archived."),
    refresh_rows: str | None = typer.Option(
        None,
        "--refresh-rows",
        help="Pay for new images of just these rows (from 0, commas: 3,7,12); others as archived.",
    ),
    remake_uncertain: bool = typer.Option(
        False,
        "--remake-uncertain",
        help="Pay again only for requests whose earlier submit is uncertain (SubmitUncertain).",
    ),
    timeout: float = typer.Option(900.0, help="Seconds to wait for each provider job."),
    max_cost: float | None = typer.Option(None, "--max-cost", help=MAX_COST_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    text_check: str = typer.Option("off", "--text-check", help=TEXT_CHECK_HELP),
    expected_text: Annotated[
        list[str] | None, typer.Option("--expected-text", help=EXPECTED_TEXT_HELP)
    ] = None,
    text_check_attempts: int = typer.Option(2, "--text-check-attempts", min=0, max=10),
    as_json: bool = typer.Option(False, "--json", help="Print the BatchResult as JSON."),
    strict: bool = typer.Option(
        False, "--strict", help="Any failed item fails the flow run and exits 1 (after all ran)."
    ),
) -> None:
    """One request per prompt, with a progress bar and a summary table.

    A failed item is reported in the table and does not fail the command (the others are paid
    for and archived; re-running retries only what is missing): the exit code is 0 unless every
    item failed (1), or any did with --strict (1; the flow run is Failed too).
    """
    with exit_on_error():
        from gptimg_flows.engine.refresh import refreshed_rows
        from gptimg_flows.errors import InvalidRequest
        from gptimg_flows.models import ImageRequest
        from gptimg_flows.rows import check_columns

        source = source_arg(prompts_file)
        ImageRequest(prompt="-", size=size, quality=quality, output_format=output_format)
        precheck(provider, archive_arg(archive), timeout)
        checks = text_check_args(text_check, expected_text, text_check_attempts)
        fresh = _row_list(refresh_rows)
        rows = prompt_rows(source, archive_arg(archive))
        if not rows:
            raise InvalidRequest(f"prompts: {prompts_file} holds no prompt", field="prompts")
        refreshed_rows(refresh, fresh, list(range(len(rows))))  # a wrong number: before a run
        check_columns(rows, template)
        if template is None and (empty := [i for i, r in enumerate(rows) if not _prompt_of(r)]):
            shown = ", ".join(str(i) for i in empty[:10]) + (" …" if len(empty) > 10 else "")
            raise InvalidRequest(
                f"prompts: {prompts_file}: row(s) {shown} have an empty prompt (rows count "
                "from 0, as each image's `row`); fill them or remove them",
                field="prompts",
            )
        if dry_run:
            print_rows_estimate(
                provider,
                rows,
                as_json,
                size=size,
                quality=quality,
                output_format=output_format,
                template=template,
                text_check_attempts=remakes(checks),
            )
            return
        kwargs: dict[str, Any] = dict(
            prompts=source,
            provider=provider_arg(provider),
            archive=archive_arg(archive),
            concurrency=concurrency,
            size=size,
            quality=quality,
            output_format=output_format,
            prompt_template=template,
            refresh=refresh,
            refresh_rows=fresh,
            remake_uncertain=remake_uncertain,
            timeout_seconds=timeout,
            max_cost=max_cost,
            fail_on_row_failure=strict,
            **checks,
        )
        result, where = run_command(lambda: _batch_with_progress(kwargs, len(rows)))
        if as_json:
            typer.echo(result.model_dump_json(indent=2))
        else:
            _print_batch_summary(result, len(rows), where)
        if len(result.failures) >= len(rows) or (strict and result.failures):
            first = result.failures[0]
            how_many = (
                f"all {len(rows)}"
                if len(result.failures) >= len(rows)
                else f"{len(result.failures)} of {len(rows)}"
            )
            raise RowsFailed(  # the flow's own name for it (README, fail_on_row_failure)
                f"{how_many} row(s) failed (first: row {first.index}: {first.error_type}: "
                f"{short_error(first.error_type, first.error)})",
                result,
            )


def _row_list(text: str | None) -> list[int] | None:
    """--refresh-rows "3,7,12" as row numbers."""
    from gptimg_flows.errors import InvalidRequest

    if text is None:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InvalidRequest(
            f"--refresh-rows {text!r}: give row numbers (from 0) separated by commas, e.g. 3,7,12",
            field="refresh_rows",
        ) from None


def _prompt_of(row: dict[str, Any]) -> str:
    value = row.get("prompt")
    return "" if value is None else str(value).strip()


async def _batch_with_progress(kwargs: dict[str, Any], total: int) -> tuple[BatchResult, str]:
    """Run `batch_generate` while a progress bar follows it.

    The bar reads the flow run's own progress artifact from the Prefect API (the one the UI
    shows), which the flow advances as each item finishes, archived or failed, at most once a
    second. It is the flow's count, not a guess: items answered from the archive count as
    soon as they are found, failures as soon as they happen. The run is found by a unique
    name. On a terminal the bar redraws; piped, it prints once, at the end.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gptimg_flows.blocks.resolve import resolve_archive
    from gptimg_flows.flows import batch_generate

    run_name = f"gptimg-batch-{uuid.uuid4().hex[:10]}"
    flow_run = batch_generate.with_options(flow_run_name=run_name)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        disable=OPTIONS.debug,
    )
    task_id = progress.add_task("batch", total=total)
    running: asyncio.Task[BatchResult] = asyncio.ensure_future(flow_run(**kwargs))
    cancelled: list[str] = []  # the run's id, once it is seen cancelled in Prefect
    try:
        with progress:
            await _follow(run_name, total, running, progress, task_id, cancelled)
            try:
                result = await running
            except RowsFailed as exc:  # --strict: the run is Failed; the summary still shows
                if exc.result is None:
                    raise
                result = exc.result
            progress.update(task_id, completed=total)
    except BaseException as exc:  # a Stop (console.py), a SIGTERM: the run stops too
        if isinstance(exc, KeyboardInterrupt | SystemExit):  # now, not after the run
            raise
        running.cancel()
        await asyncio.wait({running})
        if not running.cancelled():
            running.exception()  # the run's own end; the stop is what the command reports
        if cancelled:  # the engine marked it Crashed on its way out: it was Cancelled
            await _mark_cancelled(cancelled[0])
        raise
    where = (await resolve_archive(kwargs["archive"])).basepath
    return result, where


async def _follow(
    run_name: str,
    total: int,
    running: asyncio.Task[Any],
    progress: Progress,
    task_id: TaskID,
    cancelled: list[str] | None = None,
) -> None:
    """Every 0.5 s until the flow ends: the newest progress artifact of the run named
    `run_name`, as items done out of `total`; and whether the run was cancelled in Prefect
    (its id goes into `cancelled`).

    The filter is posted as JSON rather than through `read_artifacts`, which sends
    `"task_runs": null` (refused by Prefect 3.8.8's server) or, given an empty filter, joins on
    task runs and so misses the flow-level artifact."""
    from prefect.client.orchestration import get_client

    body = {
        "artifacts": {"type": {"any_": ["progress"]}},
        "flow_runs": {"name": {"any_": [run_name]}},
        "sort": "UPDATED_DESC",
        "limit": 1,
    }
    async with get_client() as client:
        polls = 0
        while not running.done():
            polls += 1
            try:
                response = await client.request("POST", "/artifacts/filter", json=body)
                response.raise_for_status()
                found = response.json()
                data = found[0].get("data") if found else None
                if isinstance(data, int | float):
                    progress.update(task_id, completed=min(round(total * data / 100), total))
                if cancelled is not None and not cancelled and polls % 4 == 1:  # every 2 s
                    cancelled.extend(await _stop_if_cancelled(client, run_name))
            except Exception as exc:  # the bar is informational: the flow's result decides
                log.debug("progress poll failed: %s", exc)
            await asyncio.wait({running}, timeout=0.5)


async def _stop_if_cancelled(client: PrefectClient, run_name: str) -> list[str]:
    """A run cancelled in Prefect (the UI's Cancel, the API's Cancelling): Prefect 3.9 does
    not stop a run made in-process (it would go on paying, then stay Cancelling), so the
    command stops as at a first Ctrl-C (the paid calls already sent are recorded first).
    The run's id when so."""
    stop = Stop.current
    if stop is None or stop.reason is not None:
        return []
    body = {"flow_runs": {"name": {"any_": [run_name]}}, "limit": 1}
    response = await client.request("POST", "/flow_runs/filter", json=body)
    response.raise_for_status()
    found = response.json()
    if not found or (found[0].get("state") or {}).get("type") != "CANCELLING":
        return []
    stop.request("the flow run was cancelled in Prefect")
    return [str(found[0]["id"])]


async def _mark_cancelled(run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    try:
        async with get_client() as client:
            await client.set_flow_run_state(
                run_id, Cancelled(message="Cancelled in Prefect; stopped by gptimg"), force=True
            )
    except Exception as exc:  # the stop itself is done; the state is what the UI shows
        log.debug("could not mark the run Cancelled: %s", exc)


def _print_batch_summary(result: BatchResult, total: int, where: str) -> None:
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    summary = Table(title="batch summary", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    summary.add_row("items", str(total))
    summary.add_row("images", str(len(result.images)))
    summary.add_row("failures", str(len(result.failures)))
    summary.add_row("spent this run", cost_text(result.cost))
    if result.images_cost != result.cost:
        summary.add_row("images originally cost", cost_text(result.images_cost))
    if result.refused_submits or result.rate_limit_held_seconds >= 0.5:
        summary.add_row(  # the run's wall time held back, not the submits' waits summed
            "rate limits",
            f"{result.refused_submits} submit(s) refused with 429 (nothing paid); held back "
            f"{result.rate_limit_held_seconds:.0f} s by the account's limit",
        )
    if result.route_failovers or result.route_spills:
        summary.add_row(
            "route",
            f"{result.route_failovers} request(s) moved off a failing member, "
            f"{result.route_spills} off a full rate limit",
        )
    if result.text_check_failed:
        summary.add_row("text misread", f"{result.text_check_failed} image(s) (marked below)")
    summary.add_row("archived under", Text(where))
    console.print(summary)
    for img in result.images:  # one line per image, in input order: paths stay whole
        meta = ", ".join(f"{k}={v}" for k, v in img.extra.items() if k != "derived_from")
        line = f"row {img.row}  {img.uri}" + (f"  ({meta})" if meta else "")
        console.print(Text(line + text_check_line(img)))
    if result.failures:
        failures = Table("row", "prompt", "error", title="failures")
        for f in result.failures:
            failures.add_row(
                str(f.index),
                Text(f.prompt[:60]),
                Text(f"{f.error_type}: {redact(short_error(f.error_type, f.error))}"),
            )
        console.print(failures)
