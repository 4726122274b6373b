"""distributed_batch: one big batch fanned out as chunk flow runs of the batch deployment.

Beyond one machine, a batch is split into chunks and each chunk runs as a flow run of
`batch-generate/batch-from-file` (or any deployment of `batch_generate`), so every worker of
the deployment's pool takes chunks. How it keeps "never pay twice" across machines:

- Each chunk run is created with an idempotency key made from a digest of the whole batch
  (rows and options), the chunk's index and an attempt number: re-running this flow finds the
  runs it already started instead of starting them again.
- A chunk run that crashed (its process, worker or machine died) is started again under the
  next attempt number. That is safe because batch_generate answers archived rows from the
  archive and resumes recorded jobs: the new run pays only for rows nobody paid for.
- Identical requests share one chunk, so each keeps the slot (its occurrence number among
  identical requests) a single batch_generate over the whole input would give it: the
  request keys, and so the archive's records, are the same as a plain batch's.
- The answer is read from the archive (`_results/<key>.json`, written by whichever run paid),
  not from Prefect's result store: results live on the worker that ran a chunk unless a team
  configured shared result storage, while the archive is storage every worker reaches.

The pieces: plan.py plans the chunks, watch.py starts and watches their runs, and
gather.py reads the answer from the archive and writes the report.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from prefect import flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger

from gptimg_flows.archive.store import DEFAULT_ARCHIVE_ENV, Archive
from gptimg_flows.blocks.aws import S3_BUCKET_PREFIX, is_s3_bucket
from gptimg_flows.blocks.credentials import ImageArchive
from gptimg_flows.blocks.resolve import (
    ArchiveParam,
    ProviderParam,
    looks_like_path,
    resolve_archive,
    resolve_provider,
)
from gptimg_flows.blocks.route import ProviderRoute, Route
from gptimg_flows.blocks.seller import Seller
from gptimg_flows.distributed.gather import archived_rows, gather_results, publish_report
from gptimg_flows.distributed.plan import batch_digest, check_budget, keys_and_groups, make_chunks
from gptimg_flows.distributed.watch import Watcher
from gptimg_flows.engine.produce import check_timeout, planner_of, run_budget
from gptimg_flows.engine.reading import read_rules
from gptimg_flows.engine.text_checking import failed_rows, text_failed, text_rule
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.prompt_files import read_prompts
from gptimg_flows.models import ImageRequest, OutputFormat, Quality
from gptimg_flows.results import BatchResult, cost_summary, rows_failed, spent_cost, total_cost
from gptimg_flows.rows import (
    PromptsParam,
    Row,
    check_columns,
    plan_rows,
)
from gptimg_flows.textcheck import TextCheckMode

DEFAULT_DEPLOYMENT = "batch-generate/batch-from-file"
#: Prefect's engine never beats more often than every 30 s; unless told, every 180 s.
MIN_HEARTBEAT_SECONDS = 30
PREFECT_HEARTBEAT_SECONDS = 180


@flow(name="distributed-batch", log_prints=True)
async def distributed_batch(
    prompts: PromptsParam,
    provider: ProviderParam = "offline",
    archive: ArchiveParam = None,
    chunk_size: int = 100,
    deployment: str = DEFAULT_DEPLOYMENT,
    concurrency: int = 8,
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    prompt_template: str | None = None,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    chunk_retries: int = 2,
    heartbeat_seconds: int = MIN_HEARTBEAT_SECONDS,
    lost_after_seconds: float | None = None,
    fail_on_row_failure: bool = False,
    start_timeout_seconds: float = 600.0,
    text_check: TextCheckMode = "off",
    expected_text: list[str] | None = None,
    text_check_attempts: int = 2,
) -> BatchResult:
    """Split the rows into chunks of `chunk_size`, run each as a flow run of `deployment`
    (a deployment of batch_generate) on whichever worker takes it, and gather one result.

    `prompts`, `prompt_template`, `size`, `quality`, `output_format`, `concurrency` (per
    chunk run) and `timeout_seconds` mean what they mean for batch_generate. `archive` must
    be storage every worker reaches (a saved ImageArchive block, an s3:// URL, or a shared
    absolute folder): it is where each chunk's images and job records are kept, and where
    this flow reads the answer from.

    A chunk run that crashes while this run watches is started again, up to `chunk_retries`
    times. Chunk runs beat every `heartbeat_seconds` (passed to them as
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY); a running chunk run with no heartbeat for
    `lost_after_seconds` (default 3 beats) is taken for lost with its machine, marked Crashed,
    and started again. A chunk run that never starts is cancelled and started again (also up
    to `chunk_retries` times) once it has been Pending for `start_timeout_seconds` (the
    worker that took it died before starting it), or Scheduled that long past its start while
    its work pool has no online worker; the log and the report's "runs replaced" say so.

    Re-running with the same rows and options adopts the chunk runs already started (same
    idempotency keys) and starts nothing for chunks whose rows are all archived; a chunk whose
    last run ended with rows missing (crashed, cancelled, or rows that failed) gets its next
    attempt, which answers its archived rows from the archive and pays only for the rest.

    `max_cost` (the provider's unit) is split across the chunks: the estimate of every row not
    yet archived must fit, and each chunk run gets its own rows' estimate as its budget, so
    together they never pass it. Unlike batch_generate, a budget smaller than the estimate is
    refused up front (BudgetExceeded) instead of spent on the first rows.

    `text_check`, `expected_text` and `text_check_attempts` are passed to each chunk run (see
    batch_generate); with `fail_on_row_failure`, a row none of whose images passed fails.

    Images come back in input order, each with its global `row`; `cost` is what this run
    spent (rows already archived when it started cost 0), `images_cost` what the images cost.
    """
    logger = get_run_logger()
    check_timeout(timeout_seconds)
    rule = text_rule(text_check, expected_text, text_check_attempts)
    lost_after = _check_watch_options(
        chunk_size, chunk_retries, heartbeat_seconds, lost_after_seconds
    )
    if not start_timeout_seconds > 0:
        raise InvalidRequest(
            f"start_timeout_seconds={start_timeout_seconds:g}; it must be a positive number of "
            "seconds",
            field="start_timeout_seconds",
        )
    store = await resolve_archive(archive)
    rows = _json_rows(await asyncio.to_thread(read_prompts, prompts, read_rules(store)))
    check_columns(rows, prompt_template)
    spec = await resolve_provider(provider)
    provider_ref, archive_ref = _provider_ref(spec), _archive_ref(archive, store)
    adapter = planner_of(spec)
    defaults = {"size": size, "quality": quality, "output_format": output_format}
    requests: dict[int, ImageRequest] = {}
    planned, failures = plan_rows(rows, defaults, prompt_template, adapter.validate)
    requests.update((i, r) for i, r in enumerate(planned) if r is not None)
    run_budget(adapter, max_cost, list(requests.values()))  # an unknown price is refused here
    async with get_client() as client:
        settable, numbered = await _check_deployment(client, deployment)
        if not settable:
            heartbeat_seconds, lost_after = _default_beats(
                deployment, heartbeat_seconds, lost_after
            )
        keys, groups = keys_and_groups(spec, requests)
        done = await archived_rows(store, keys)
        if max_cost is not None:
            check_budget(adapter, requests, done, max_cost)
        options = {
            "provider": provider_ref,
            "archive": archive_ref,
            "concurrency": concurrency,
            "size": size,
            "quality": quality,
            "output_format": output_format,
            "prompt_template": prompt_template,
            "timeout_seconds": timeout_seconds,
        }
        if rule.on:  # only then: an unchecked batch keeps the digest it always had
            options.update(
                text_check=text_check,
                expected_text=expected_text,
                text_check_attempts=text_check_attempts,
            )
        digest = batch_digest(rows, options, deployment, chunk_size, max_cost)
        chunks = make_chunks(
            adapter,
            rows,
            requests,
            groups,
            done,
            options,
            chunk_size,
            budgeted=max_cost is not None,
            numbered=numbered,
        )
        logger.info(
            "%d row(s) in %d chunk(s) of up to %d; %d already archived, %d invalid; batch %s",
            len(rows),
            len(chunks),
            chunk_size,
            len(done),
            len(failures),
            digest[:12],
        )
        watcher = Watcher(
            deployment=deployment,
            digest=digest,
            chunks=chunks,
            chunk_retries=chunk_retries,
            heartbeat_seconds=heartbeat_seconds,
            lost_after=lost_after,
            set_beats=settable,
            start_timeout=start_timeout_seconds,
        )
        await watcher.run(client)
        images, failures = await gather_results(client, store, rows, keys, done, chunks, failures)
    if fail_on_row_failure and rule.on:
        failures = sorted([*failures, *failed_rows(images, rows)], key=lambda f: f.index)
    result = BatchResult(
        images=images,
        failures=failures,
        cost=spent_cost(images),
        images_cost=total_cost(images),
        text_check_failed=text_failed(images),
    )
    logger.info(
        "distributed batch: %d image(s), %d failure(s); %s",
        len(images),
        len(failures),
        cost_summary(images),
    )
    await publish_report(result, chunks, len(rows), digest)
    if fail_on_row_failure and failures:
        raise rows_failed(result, len(rows))  # after every row is gathered and reported
    return result


# -- parameters ---------------------------------------------------------------------------------


def _check_watch_options(
    chunk_size: int, chunk_retries: int, heartbeat_seconds: int, lost_after_seconds: float | None
) -> float:
    if chunk_size < 1:
        raise InvalidRequest(f"chunk_size={chunk_size}; it must be 1 or more", field="chunk_size")
    if chunk_retries < 0:
        raise InvalidRequest(
            f"chunk_retries={chunk_retries}; it must be 0 or more", field="chunk_retries"
        )
    if heartbeat_seconds < MIN_HEARTBEAT_SECONDS:
        raise InvalidRequest(
            f"heartbeat_seconds={heartbeat_seconds}; Prefect beats every 30 s at most",
            field="heartbeat_seconds",
        )
    lost_after = 3.0 * heartbeat_seconds if lost_after_seconds is None else lost_after_seconds
    if not lost_after > heartbeat_seconds:
        raise InvalidRequest(
            f"lost_after_seconds={lost_after:g}; it must be more than heartbeat_seconds="
            f"{heartbeat_seconds} (a live chunk run beats once every heartbeat_seconds)",
            field="lost_after_seconds",
        )
    return lost_after


async def _check_deployment(client: PrefectClient, name: str) -> tuple[bool, bool]:
    """The chunk deployment exists and runs batch_generate (whose archive records this flow
    reads), before any chunk run is created. Returns whether its work pool takes an `env`
    job variable, through which chunk runs are told how often to beat, and whether its runs
    take `row_numbers` (a deployment made before they existed does not)."""
    try:
        found = await client.read_deployment_by_name(name)
    except (ObjectNotFound, ValueError):
        raise InvalidRequest(
            f"deployment: no deployment {name!r} (`flow-name/deployment-name`); deploy "
            "deployments/prefect.yaml (`prefect deploy --all`) or name your own deployment of "
            "batch_generate",
            field="deployment",
        ) from None
    flow_name = (await client.read_flow(found.flow_id)).name
    if flow_name != "batch-generate":
        raise InvalidRequest(
            f"deployment: {name!r} runs the flow {flow_name!r}; chunks must run batch-generate",
            field="deployment",
        )
    parameters = (found.parameter_openapi_schema or {}).get("properties", {})
    numbered = "row_numbers" in parameters
    if not numbered:
        get_run_logger().warning(
            "deployment %r predates `row_numbers`: its chunk runs record each image's row "
            "within its chunk in the sidecar (the result still has the input's row); deploy "
            "it again to record the input's row",
            name,
        )
    if not found.work_pool_name:
        return False, numbered  # served (`prefect serve`): the serving process beats
    pool = await client.read_work_pool(found.work_pool_name)
    variables = (pool.base_job_template or {}).get("variables", {}).get("properties", {})
    return "env" in variables, numbered


def _default_beats(deployment: str, heartbeat_seconds: int, lost_after: float) -> tuple[int, float]:
    """Chunk runs we cannot set the heartbeat of beat as their workers say: assume Prefect's
    default, and wait as many of those beats before calling a run lost."""
    get_run_logger().warning(
        "chunk runs of %r cannot be told how often to beat (their work pool has no `env` job "
        "variable): assuming Prefect's default of %d s; set PREFECT_FLOWS_HEARTBEAT_FREQUENCY="
        "%d where they run, and heartbeat_seconds to match, to find lost ones sooner",
        deployment,
        PREFECT_HEARTBEAT_SECONDS,
        heartbeat_seconds,
    )
    return PREFECT_HEARTBEAT_SECONDS, lost_after * PREFECT_HEARTBEAT_SECONDS / heartbeat_seconds


def _json_rows(rows: list[Row]) -> list[Row]:
    """The rows as chunk runs will receive them (JSON parameters), so the request keys this
    flow computes are the ones the chunk runs compute."""
    try:
        decoded: list[Row] = json.loads(json.dumps(rows))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"prompts: every value must be JSON (strings, numbers, lists, dicts): {exc}; chunk "
            "runs receive the rows as flow-run parameters",
            field="prompts",
        ) from None
    return decoded


def _provider_ref(resolved: Seller | Route) -> str | list[str]:
    """What a chunk run on another machine loads the provider from: a saved block's
    `slug/name` (never its secrets as a parameter), or `offline`; for a route, the saved
    route's, or each member's."""
    if isinstance(resolved, Route):
        if resolved.saved:
            return f"{ProviderRoute.get_block_type_slug()}/{resolved.saved}"
        return [str(_provider_ref(m)) for m in resolved.members]
    spec = resolved.spec
    if isinstance(spec, str):
        return spec
    name = getattr(spec, "_block_document_name", None)
    if not name or getattr(spec, "_is_anonymous", False):
        raise InvalidRequest(
            "provider: chunk runs load the credentials on their own worker, so pass a saved "
            "block (its name, or a block object after .save(name)), not an unsaved block",
            field="provider",
        )
    return f"{spec.get_block_type_slug()}/{name}"


def _archive_ref(archive: ArchiveParam, store: Archive) -> str:
    """What a chunk run opens the same archive from: a saved block's name, a URL, or an
    absolute folder (a relative one would be resolved in each worker's own directory)."""
    if is_s3_bucket(archive):
        name = getattr(archive, "_block_document_name", None)
        if name and not getattr(archive, "_is_anonymous", False):
            return f"{S3_BUCKET_PREFIX}{name}"
        raise InvalidRequest(
            "archive: an unsaved S3Bucket block cannot be handed to chunk runs (its keys would "
            "travel as parameters); save it (.save(name)) and pass its name",
            field="archive",
        )
    if isinstance(archive, ImageArchive):
        name = getattr(archive, "_block_document_name", None)
        if name and not getattr(archive, "_is_anonymous", False):
            return str(name)
        if archive.s3_bucket:
            return f"{S3_BUCKET_PREFIX}{archive.s3_bucket}"
        if archive.storage_options or archive.secret_storage_options:
            raise InvalidRequest(
                "archive: an unsaved ImageArchive with storage options cannot be handed to "
                "chunk runs; save it (.save(name)) and pass its name",
                field="archive",
            )
        return store.root if store.local else store.basepath
    if isinstance(archive, str) and not looks_like_path(archive.strip()):
        return archive.strip()  # a saved block's name: chunk runs load it
    if archive is None and not os.environ.get(DEFAULT_ARCHIVE_ENV):
        get_run_logger().warning(
            "archive not set: chunk runs will use %s, which only workers on this machine "
            "reach; pass a shared archive (an ImageArchive block or an s3:// URL)",
            store.root,
        )
    return str(Path(store.root)) if store.local else store.basepath
