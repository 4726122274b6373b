"""The step tasks of one request: upload_inputs, submit_job, wait_for_job, download_outputs,
archive_images, and make_images (all of a request's steps in one task run: what the flows use).
`gptimg_flows.tasks` re-exports them for users' own flows.

Retry, idempotency and cache policy live here, once:
- retries happen only for `RetryableError`, as Prefect retries the UI shows, with exponential
  backoff and jitter that never undercuts a provider's Retry-After (free reads, a poll or a
  download, first retry in place: see `retry.read_with_retries`);
- a submit is keyed on the normalised request, its inputs' digests and the output slot; the key's
  job record in the archive is claimed with an exclusive create before the paid call (of two
  runs of one request, one pays; the other waits for its job) and holds the job after it, so a
  retry, a re-run or a restarted process polls the recorded job instead of paying again;
- a request whose images are already archived (`_results/<key>.json`) is answered from the
  archive with no provider call. Credentials never enter a key, a parameter or a result.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from typing import Any

import httpx
from prefect import task
from prefect.logging import get_run_logger
from prefect.tasks import Task
from pydantic import ValidationError

from gptimg_flows.archive.layout import STAGING_DIR, job_rel, record_fix, staging_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.credentials import ProviderCredentials, ProviderSpec
from gptimg_flows.blocks.seller import Seller, seller_of
from gptimg_flows.engine.assets import emit_materializations
from gptimg_flows.engine.job_record import Recorded, State, classify, state_of
from gptimg_flows.engine.limits import provider_slot, submit_allowance
from gptimg_flows.engine.pacing import account_limiter, paced_submit, reads_of, wait_bound
from gptimg_flows.engine.polling import poll_until_done
from gptimg_flows.engine.quiet_logs import quiet_per_image_completions
from gptimg_flows.engine.rate_limiter import gated_read
from gptimg_flows.engine.reading import read_rules
from gptimg_flows.engine.records import (
    ClaimAttempt,
    archived_result,
    claim_alive,
    end_claim,
    held_claim,
    job_recorded,
    rebuilt_result,
    record_job,
    try_claim,
    write_images,
)
from gptimg_flows.engine.retry import (
    read_with_retries,
)
from gptimg_flows.engine.retry_policy import (
    RETRIES,
    RETRY_OPTIONS,
    log_read_retry,
    retry_delays,
    retry_unless_moving,
)
from gptimg_flows.errors import (
    BatchPending,
    DamagedRecord,
    InvalidRequest,
    JobTimeout,
    MalformedResponse,
    OutputExpired,
    ProviderError,
    RateLimited,
    RoutedElsewhere,
    SubmitUncertain,
    nothing_created,
)
from gptimg_flows.media.download import DownloadedImage, download, save_inline, shared_client
from gptimg_flows.media.inputs import load_image, prepare_mask
from gptimg_flows.media.reads import ReadRules, trusted_host_of
from gptimg_flows.models import (
    ArchivedImage,
    EditRequest,
    ImageRequest,
    InputImage,
    Job,
    JobStatus,
    OutputRef,
)
from gptimg_flows.providers._http import failure_error
from gptimg_flows.providers.base import PreparedInputs, Provider

#: Fresh URLs asked for one output before its expiry is final.
URL_REFRESHES = 3
#: The way out of SubmitUncertain, once (the error class says why it is not retried).
UNCERTAIN_FIX = (
    "Look the job up in the provider's dashboard; to pay for a new one for just the requests "
    "in doubt, re-run with remake_uncertain=True (gptimg: --remake-uncertain)"
)

# -- tasks --------------------------------------------------------------------------------------


quiet_per_image_completions()


@task(name="upload-inputs", **RETRY_OPTIONS)
async def upload_inputs(
    provider: ProviderSpec | Seller,
    request: EditRequest,
    images: list[InputImage],
    mask: InputImage | None,
    archive: Archive,
) -> PreparedInputs:
    """Hand loaded inputs to the provider (asset uploads, URLs, data URIs, multipart).

    Inputs are archived (content-addressed) so lineage can point at them, and so providers that
    only take URLs can be given signed ones.
    """
    logger = get_run_logger()
    adapter = seller_of(provider).adapter
    if "bytes" not in adapter.capabilities.input_kinds:
        images = [await _with_url(archive, img) for img in images]
        if mask is not None:
            mask = await _with_url(archive, mask)
    else:
        await asyncio.gather(*(_archive_input(archive, img) for img in images))
    prepared = await adapter.upload_inputs(request, images, mask)
    logger.info(
        "prepared %d input image(s)%s for %s",
        len(images),
        " and a mask" if mask else "",
        adapter.display_name,
    )
    return prepared


async def load_edit_inputs(
    request: EditRequest, archive: Archive
) -> tuple[list[InputImage], InputImage | None]:
    """Read and check every input before anything is uploaded or paid: a bad file, a URL into
    a private network, or a mask that does not fit the image fails here."""
    rules = read_rules(archive)
    images = list(
        await asyncio.gather(
            *(load_image(src, f"images[{i}]", rules=rules) for i, src in enumerate(request.images))
        )
    )
    mask: InputImage | None = None
    if request.mask is not None:
        raw_mask = await load_image(request.mask, "mask", rules=rules)
        mask = await asyncio.to_thread(prepare_mask, raw_mask, images[0])
    return images, mask


async def _archive_input(archive: Archive, image: InputImage) -> str:
    rel = Archive.image_rel(image.sha256, image.mime)
    return await asyncio.to_thread(archive.put_bytes, image.data, rel, overwrite=False)


async def _with_url(archive: Archive, image: InputImage) -> InputImage:
    if image.url:
        return image
    rel = Archive.image_rel(image.sha256, image.mime)
    await asyncio.to_thread(archive.put_bytes, image.data, rel, overwrite=False)
    try:
        url = await asyncio.to_thread(archive.sign, rel)
    except NotImplementedError as exc:
        raise InvalidRequest(str(exc), field="images") from None
    return image.model_copy(update={"url": url})


@task(name="submit-job", task_run_name="submit-{key:.12}", **RETRY_OPTIONS)
async def submit_job(
    provider: ProviderSpec | Seller,
    request: ImageRequest,
    inputs: PreparedInputs | None,
    key: str,
    archive: Archive,
    timeout_seconds: float | None = None,
    member: str | None = None,
) -> Job:
    """The one paid call, guarded by the key's job record so it happens once per key.

    Paced by the account's rate limiter: a 429 created nothing, so it waits and tries again
    (never a task retry) until the block's `rate_limit_wait_seconds` (or `timeout_seconds`).
    `member`: the route member this is sent to (recorded with the job; a key already held by
    another member raises RoutedElsewhere)."""
    return await _submit(
        seller_of(provider), request, inputs, key, archive, timeout_seconds, member
    )


async def _submit(
    seller: Seller,
    request: ImageRequest,
    inputs: PreparedInputs | None,
    key: str,
    archive: Archive,
    timeout_seconds: float | None,
    member: str | None,
) -> Job:
    logger = get_run_logger()
    adapter = seller.adapter
    adapter.validate(request)
    submitting: dict[str, Any] = {"state": "submitting", "key": key, "provider": adapter.name}
    if member is not None:
        submitting["member"] = member
    limiter = account_limiter(seller.spec, adapter)
    while True:
        # Claim at once only when nothing will wait: a claim made before a long wait for the
        # limiter would leave a crash there looking like a lost answer (SubmitUncertain).
        held: list[ClaimAttempt] = []  # a claim already made, used by the first try only
        if limiter.rate is None and limiter.waiting == 0:
            claim = await _claim(archive, key, submitting)
            record = claim.record if claim.owner is None else None
            held = [claim] if claim.owner is not None else []
        else:
            record = await asyncio.to_thread(archive.read_json, job_rel(key))
        if record is not None:
            found = await _job_of_record(adapter, archive, key, request, record, member)
            if found is None:
                continue  # the claim we lost to was withdrawn (its submit was refused)
            return found
        try:
            job = await paced_submit(
                limiter,
                request.n,
                functools.partial(
                    _claimed_submit, adapter, request, inputs, key, archive, submitting, held
                ),
                wait_bound(seller.spec, timeout_seconds),
            )
        except _ClaimedElsewhere:
            continue  # another run claimed the key while this one waited for the limiter
        except BaseException as exc:
            if isinstance(exc, RateLimited):
                exc.unpaid = exc.gave_up  # every try was refused (withdrawn) or never sent
            if held:  # claimed up front, never used: no call was made, so nothing is owed
                await asyncio.shield(asyncio.to_thread(archive.delete, job_rel(key)))
            raise
        break
    # DEBUG: the "archived" line names the job too; per image, INFO lines are what the flow
    # process formats and the server stores most of (bench/RESULTS.md).
    logger.debug("submitted %s job %s (%d image(s))", adapter.display_name, job.job_id, job.n)
    return job


class _ClaimedElsewhere(Exception):
    """Another run claimed this key first: this one waits for that run's job instead."""


class _PaidCall(asyncio.Task[Job]):
    """A paid call's own task, run until its answer is recorded. A cancellation of it is
    refused, only noted (`stopping`): what cancels every task of a loop at once (asyncio.run
    closing after a Ctrl-C, a KeyboardInterrupt or a SIGTERM) waits for it instead of cutting
    a call that was sent. `cut` (a second Ctrl-C: `stop_paying`) cancels it for real."""

    what = ""
    sent = False  # its request may have reached the provider
    stopping = False  # no new call: one not sent yet withdraws its claim
    _may_cut = False

    def cancel(self, msg: Any | None = None) -> bool:
        if self._may_cut:
            return super().cancel(msg)
        self.stopping = True
        return False

    def cut(self) -> bool:
        self.stopping = self._may_cut = True
        return super().cancel("stopped at once")


#: Every paid call's task in this process until it ends: what a stop waits for, or cuts.
PAID_CALLS: set[_PaidCall] = set()
#: Event loops that send no new paid call (their command is stopping).
_NOT_PAYING: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def stop_paying(*, at_once: bool = False) -> list[str]:
    """This event loop sends no new paid call (a task a stopped flow left running, such as a
    row of a gather whose sibling raised, withdraws its claim instead); `at_once` (a second
    Ctrl-C) also cuts every paid call in flight, ending each claim as possibly billed (a
    re-run stops on it with SubmitUncertain). What each call sent and unanswered is."""
    _NOT_PAYING.add(asyncio.get_running_loop())
    sent = sorted(call.what for call in PAID_CALLS if call.sent and not call.done())
    if at_once:
        for call in list(PAID_CALLS):
            call.cut()
    return sent


async def _claim(archive: Archive, key: str, submitting: dict[str, Any]) -> ClaimAttempt:
    """`try_claim` in a thread; stopped meanwhile, the claim it made is withdrawn once the
    thread is done (nothing was sent: left, it would read as a lost answer, SubmitUncertain)."""
    loop = asyncio.get_running_loop()
    claiming = loop.run_in_executor(None, try_claim, archive, key, submitting)
    try:
        return await asyncio.shield(claiming)
    except asyncio.CancelledError:
        await asyncio.wait({claiming})
        if not claiming.exception() and claiming.result().owner is not None:
            await asyncio.shield(loop.run_in_executor(None, archive.delete, job_rel(key)))
        raise


async def _claimed_submit(
    adapter: Provider,
    request: ImageRequest,
    inputs: PreparedInputs | None,
    key: str,
    archive: Archive,
    submitting: dict[str, Any],
    held: list[ClaimAttempt],
) -> Job:
    """One try of the paid call under an exclusive claim made just before it (each try claims
    afresh: a refused try withdrew its claim), recorded before the claim is let go.

    The call runs as its own task (`_PaidCall`), awaited through a shield: a cancellation of
    the caller (Ctrl-C, a cancelled run) waits until its answer is recorded (the job, or the
    claim withdrawn or ended), then raises CancelledError. A second one stops waiting; the
    call still ends recorded unless it is cut (`stop_paying`)."""
    call = _PaidCall(
        _paid_call(adapter, request, inputs, key, archive, submitting, held),
        loop=asyncio.get_running_loop(),
        name=f"paid-submit-{key[:12]}",
    )
    call.what = f"{adapter.display_name} submit of {request.prompt[:40]!r} (request {key[:12]})"
    PAID_CALLS.add(call)
    call.add_done_callback(PAID_CALLS.discard)
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError as exc:
        stop = exc
    call.stopping = True
    if not call.done():
        if call.sent:
            get_run_logger().info(
                "stopping: waiting for the answer of the %s, already sent, to be recorded",
                call.what,
            )
        await asyncio.wait({call})
    if not call.cancelled():
        call.exception()  # its outcome is on record; the run stops all the same
    raise stop


async def _paid_call(
    adapter: Provider,
    request: ImageRequest,
    inputs: PreparedInputs | None,
    key: str,
    archive: Archive,
    submitting: dict[str, Any],
    held: list[ClaimAttempt],
) -> Job:
    """The body of `_claimed_submit`, in its own task: claim, send, record."""
    me = asyncio.current_task()
    assert isinstance(me, _PaidCall)
    claim = held.pop() if held else await _claim(archive, key, submitting)
    if claim.owner is None or claim.record is None:
        raise _ClaimedElsewhere
    if me.stopping or me.get_loop() in _NOT_PAYING:  # stopped: nothing sent, nothing owed
        await asyncio.to_thread(archive.delete, job_rel(key))
        raise asyncio.CancelledError
    withdraw = False  # True when the provider created nothing: the claim goes
    answer: Job | None = None
    me.sent = True
    try:
        async with held_claim(archive, key, claim.record):  # renewed while the call runs
            try:
                job = await adapter.submit(request, inputs, key)
            except ProviderError as exc:
                if nothing_created(exc):  # refused, or never sent: nothing to pay for
                    withdraw = exc.unpaid = True
                    raise
                # An answer that may have created a job (a 5xx gateway error, a reset or a
                # timeout after sending, a 2xx we cannot read): never a refusal.
                found = await _asked_after_ambiguous(adapter, request, key, exc)
                if found is None:
                    withdraw = exc.unpaid = True  # the provider has none under our key
                    raise
                job = found
            if submitting.get("member"):
                job = job.model_copy(update={"member": submitting["member"]})
            answer = await _stage_inline(archive, job)
    except BaseException as exc:
        if answer is None:
            # After the renewals stopped, so this write is the last: a withdrawn claim lets
            # the next try (or run) claim afresh; an ended one stays as evidence the call may
            # have been billed, so a re-run looks the job up (or stops with SubmitUncertain).
            if withdraw:
                await asyncio.to_thread(archive.delete, job_rel(key))
            else:
                await asyncio.shield(asyncio.to_thread(end_claim, archive, key, claim.record))
                if isinstance(exc, asyncio.CancelledError):
                    get_run_logger().warning(
                        "stopped at once: the %s was sent and its answer is not recorded: it "
                        "may have been billed. %s",
                        me.what,
                        UNCERTAIN_FIX,
                    )
            raise
        # The answer is in hand: what ended the renewals (a closing loop cancels every task,
        # theirs too) does not lose it.
        await record_job(archive, answer)
        if isinstance(exc, asyncio.CancelledError):
            return answer
        raise
    await record_job(archive, answer)
    return answer


async def _asked_after_ambiguous(
    adapter: Provider, request: ImageRequest, key: str, exc: ProviderError
) -> Job | None:
    """After an answer that may have created a job: the job, where the provider can be asked
    by our key (Runware's taskUUID) and has it; None where it says it has none. Where it
    cannot be asked, or does not answer, the submit is uncertain: SubmitUncertain (a
    MalformedResponse stays itself), never sent again without a re-make of that request."""
    if adapter.capabilities.can_find_job_by_key:
        probe = Job(
            provider=adapter.name, model=adapter.capabilities.model, job_id="", key=key, n=request.n
        )
        try:
            found = await adapter.find_job(probe)
        except ProviderError:
            raise exc from None  # no word either way: the claim stays, a retry asks again
        if found is None:
            return None
        get_run_logger().info(
            "%s answered %s, but has job %s under our key: polling it, not paying again",
            adapter.display_name,
            type(exc).__name__,
            found.job_id,
        )
        return probe.model_copy(update={"job_id": found.job_id})
    if isinstance(exc, MalformedResponse):
        raise exc
    raise SubmitUncertain(
        f"the submit was answered {exc.message!r}"
        + (f" (HTTP {exc.status_code})" if exc.status_code else "")
        + f" after it reached {adapter.display_name}, which cannot be asked whether it made "
        "the job: it may have been billed, so it is not sent again. " + UNCERTAIN_FIX,
        provider=adapter.name,
    ) from exc


async def _job_of_record(
    adapter: Provider,
    archive: Archive,
    key: str,
    request: ImageRequest,
    record: Any,
    member: str | None = None,
) -> Job | None:
    """The job a key's record leads to, without paying (engine/job_record's states): the
    recorded job; another live run's job once it has one (None if that run's claim is
    withdrawn: the caller claims again); an uncertain claim's job looked up by key, or
    SubmitUncertain where the provider cannot; a line of a recorded batch: BatchPending. A
    record of another route member's submit raises RoutedElsewhere: the request stays there."""
    logger = get_run_logger()
    found = await asyncio.to_thread(classify, archive, key, record)
    if found.state is State.SUBMITTING:
        logger.info(
            "another run is submitting this request (since %s): waiting for its job, "
            "not paying again",
            record.get("started_at"),
        )
        record = await _claim_settled(archive, key)
        found = await asyncio.to_thread(classify, archive, key, record)
        if record is None:
            return None
    if not isinstance(record, dict):
        raise _damaged(archive, key, "it is not a JSON object")
    if member is not None and found.member is not None and found.member != member:
        raise RoutedElsewhere(
            f"this request was submitted to route member {found.member!r}: it stays there",
            member=found.member,
        )
    if found.state is State.SUBMITTED:
        try:
            job = Job.model_validate(record["job"])
        except ValidationError as exc:
            problem = f"its job is not a job ({exc.error_count()} error(s))"
            raise _damaged(archive, key, problem) from None
        logger.info(
            "job %s for this request is already recorded: polling it, not paying again", job.job_id
        )
        return job
    if found.state is State.BATCHED:
        raise BatchPending(
            f"this request is a line of OpenAI batch record {record.get('batch')}: run with "
            "batch_api=True to collect it (nothing is sent again)",
            provider=adapter.name,
        )
    if found.state is State.NONE:  # a line of a batch that was never created
        await asyncio.to_thread(_withdraw_if_same, archive, key, record)
        return None
    probe = Job(
        provider=adapter.name, model=adapter.capabilities.model, job_id="", key=key, n=request.n
    )
    looked_up = await adapter.find_job(probe)
    if looked_up is not None:
        job = probe.model_copy(update={"job_id": looked_up.job_id, "member": found.member})
        await record_job(archive, job)
        logger.info("found job %s submitted earlier under this key", job.job_id)
        return job
    if not adapter.capabilities.can_find_job_by_key:
        raise SubmitUncertain(uncertain_text(found), provider=adapter.name)
    # The provider has no job under this key: the dead claim goes, and this run claims afresh
    # (unless another run replaced the claim meanwhile).
    await asyncio.to_thread(_withdraw_if_same, archive, key, record)
    return None


def _damaged(archive: Archive, key: str, problem: str) -> DamagedRecord:
    return DamagedRecord(
        f"{archive.uri(job_rel(key))}: {problem}. {record_fix(job_rel(key))}",
        provider=None,
    )


def _withdraw_if_same(archive: Archive, key: str, record: dict[str, Any]) -> None:
    if archive.read_json(job_rel(key)) == record:
        archive.delete(job_rel(key))


async def settled(archive: Archive, key: str) -> Recorded:
    """A key's job record once no live claim holds it (another run's paid call in flight is
    waited for: its answer decides what this run may do)."""
    found = await asyncio.to_thread(state_of, archive, key, results=False)
    if found.state is State.SUBMITTING:
        record = await _claim_settled(archive, key)
        found = await asyncio.to_thread(classify, archive, key, record)
    return found


async def past_live_claim(archive: Archive, found: Recorded) -> Recorded:
    """`found`, or, when it is another run's live claim, what that claim became: its job, or
    nothing if it was withdrawn. Read before a hold, so a run that ends up paying (the claim
    withdrawn) has taken its estimate from the budgets like any other paid submit."""
    if found.state is not State.SUBMITTING:
        return found
    return await settled(archive, found.key)


def uncertain_text(found: Recorded) -> str:
    """Why an uncertain request is not sent again, and the way out."""
    started = (found.record or {}).get("started_at", "an unknown time")
    return (
        f"a submit for this request started at {started} and its answer was lost; it may have "
        "been billed. " + UNCERTAIN_FIX
    )


async def _claim_settled(archive: Archive, key: str) -> Any | None:
    """Re-read a live claim's record until it is no longer a live claim: the job, a dead
    claim, or nothing (withdrawn)."""
    pause = 0.2
    while True:
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 2.0)
        record = await asyncio.to_thread(archive.read_json, job_rel(key))
        if not (isinstance(record, dict) and claim_alive(record)):
            return record


async def _stage_inline(archive: Archive, job: Job) -> Job:
    """Synchronous providers hand back image bytes: keep them in the archive at once."""
    if job.status is None or not any(o.data for o in job.status.outputs):
        return job
    staged: list[OutputRef] = []
    for ref in job.status.outputs:
        if ref.data is None:
            staged.append(ref)
            continue
        ext = {"image/jpeg": "jpg", "image/webp": "webp"}.get(ref.mime or "", "png")
        rel = staging_rel(job.key, ref.index, ext)
        uri = await asyncio.to_thread(archive.put_bytes, ref.data, rel)
        staged.append(ref.model_copy(update={"data": None, "url": uri}))
    return job.model_copy(update={"status": job.status.model_copy(update={"outputs": staged})})


@task(name="wait-for-job", task_run_name="wait-{job.job_id}", **RETRY_OPTIONS)
async def wait_for_job(
    provider: ProviderSpec | Seller, job: Job, timeout_seconds: float = 900.0
) -> JobStatus:
    """Poll until the job ends: fast at first, then backing off, following the provider's hints.

    Passing the deadline raises `JobTimeout` (the job is canceled where the API allows).
    """
    return await _wait(seller_of(provider), job, timeout_seconds)


async def _wait(seller: Seller, job: Job, timeout_seconds: float) -> JobStatus:
    logger = get_run_logger()
    adapter = seller.adapter
    if job.status is not None and job.status.state.terminal:
        status = job.status
    else:
        status = await poll_until_done(adapter, job, timeout_seconds)
    if status.state.value != "succeeded":
        raise failure_error(adapter.name, job, status)
    logger.debug("job %s finished with %d output(s)", job.job_id, len(status.outputs) or job.n)
    return status


@task(name="download-outputs", task_run_name="download-{job.job_id}", **RETRY_OPTIONS)
async def download_outputs(
    provider: ProviderSpec | Seller,
    job: Job,
    status: JobStatus,
    archive: Archive,
    timeout_seconds: float | None = None,
) -> list[DownloadedImage]:
    """Stream each output to a verified local file, re-resolving URLs that expired.

    `timeout_seconds`: every download, its retries and any 429 hold end by then (JobTimeout;
    the job is paid, so a re-run that finds its record downloads it again without paying)."""
    return await _download(seller_of(provider), job, status, archive, timeout_seconds)


async def _download(
    seller: Seller,
    job: Job,
    status: JobStatus,
    archive: Archive,
    timeout_seconds: float | None,
) -> list[DownloadedImage]:
    adapter = seller.adapter
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    async def all_outputs() -> list[DownloadedImage]:
        refs = await read_with_retries(
            lambda: adapter.resolve_outputs(job, status),
            budget=left(),
            on_retry=log_read_retry(f"resolving the outputs of job {job.job_id}"),
        )
        client = shared_client()
        fetches = (
            _fetch(adapter, client, archive, job, ref, deadline, seller.spec) for ref in refs
        )
        return list(await asyncio.gather(*fetches))

    limit = asyncio.timeout(timeout_seconds)
    try:
        async with limit:
            return await all_outputs()
    except TimeoutError:
        if not limit.expired():
            raise
        raise JobTimeout(
            f"downloading its outputs did not end within {timeout_seconds:g} s "
            "(timeout_seconds); the job is done and paid: downloading it again costs nothing",
            provider=adapter.name,
            job_id=job.job_id,
        ) from None


async def _fetch(
    adapter: Provider,
    client: httpx.AsyncClient,
    archive: Archive,
    job: Job,
    ref: OutputRef,
    deadline: float | None = None,
    spec: ProviderSpec | None = None,
) -> DownloadedImage:
    """One output, fetched (a 429 holds the account's reads, never past `deadline`)."""
    if ref.data is not None:
        return await save_inline(ref)
    current = ref

    reads = reads_of(adapter, spec)
    staging = archive.path(STAGING_DIR)
    rules = ReadRules(trusted_hosts=trusted_host_of(adapter.base_url))

    async def once() -> DownloadedImage:
        nonlocal current
        for refreshed in range(URL_REFRESHES + 1):
            try:
                fetch = functools.partial(
                    download, client, current, fs=archive.fs, staging=staging, rules=rules
                )
                return await gated_read(reads, fetch, deadline=deadline)
            except OutputExpired:
                if refreshed == URL_REFRESHES:
                    raise
                current = await adapter.refresh_output(job, current)
                get_run_logger().info("output %d URL expired; re-resolved it", ref.index)
        raise AssertionError("unreachable: the last download returns or raises")

    try:
        return await read_with_retries(
            once,
            budget=None if deadline is None else max(0.0, deadline - time.monotonic()),
            on_retry=log_read_retry(f"download of output {ref.index} of job {job.job_id}"),
        )
    except ProviderError as exc:
        exc.about(provider=adapter.name, job_id=job.job_id)
        raise


@task(name="run-job", task_run_name="job-{key:.12}", **RETRY_OPTIONS)
async def run_job(
    provider: ProviderSpec | Seller,
    request: ImageRequest,
    inputs: PreparedInputs | None,
    key: str,
    archive: Archive,
    timeout_seconds: float = 900.0,
    member: str | None = None,
) -> tuple[Job, JobStatus, list[DownloadedImage]]:
    """submit_job → wait_for_job → download_outputs as one task run: what the flows use.

    Each step is idempotent (the job record makes a repeated submit a resume), so a Prefect
    retry of the whole run picks up where it failed without paying again; one task run instead
    of three per request is what keeps a 500-image batch from drowning the Prefect server in
    task-run events (see bench/RESULTS.md).
    """
    return await _run(seller_of(provider), request, inputs, key, archive, timeout_seconds, member)


async def _run(
    seller: Seller,
    request: ImageRequest,
    inputs: PreparedInputs | None,
    key: str,
    archive: Archive,
    timeout_seconds: float,
    member: str | None,
) -> tuple[Job, JobStatus, list[DownloadedImage]]:
    job = await _submit(seller, request, inputs, key, archive, timeout_seconds, member)
    status = await _wait(seller, job, timeout_seconds)
    images = await _download(seller, job, status, archive, timeout_seconds)
    return job, status, images


@task(name="make-images", task_run_name="job-{key:.12}", **RETRY_OPTIONS)
async def make_images(
    provider: ProviderSpec | Seller,
    request: ImageRequest,
    inputs: PreparedInputs | None,
    key: str,
    archive: Archive,
    parents: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    timeout_seconds: float = 900.0,
    row: int | None = None,
    member: str | None = None,
) -> list[ArchivedImage]:
    """One request from submit to archive, in one task run: what the flows use.

    `run_job` then `archive_images`, and the asset events a materializing task would emit
    (each archived image materialized, its inputs referenced as upstream), so the UI draws
    the same lineage. One task run per image instead of two is what bench/RESULTS.md measures.
    Every step is idempotent, so a retry after a failed archive write resumes the recorded
    job (it may download again; it never pays again).
    """
    seller = seller_of(provider)
    async with provider_slot(seller.spec):  # a slot of the provider's limit while its job runs
        await submit_allowance(seller.spec)
        try:
            job, status, images = await _run(
                seller, request, inputs, key, archive, timeout_seconds, member
            )
        except RoutedElsewhere:
            raise
        except ProviderError as exc:
            if exc.unpaid:
                raise  # nothing was created under this key: nobody else's images either
            # Another run of this request (it held the claim) may have archived the images
            # meanwhile and removed what both were reading (its staged outputs): theirs are ours.
            done = await archived_result(archive, key)
            if done is None and await job_recorded(archive, key):
                done = await asyncio.to_thread(rebuilt_result, archive, key)
            if done is None:
                raise
            get_run_logger().info(
                "this request's images are already archived (by another run, or found again "
                "from their sidecars): using them, nothing paid"
            )
            update = {"from_archive": True, "row": row, "extra": dict(extra or {})}
            return [img.model_copy(update=update) for img in done]
    archived = await archive_images.fn(
        images, archive, key, job, status, request.prompt, parents, extra, row
    )
    emit_materializations(archived, parents or [])
    return archived


def make_images_for(provider: ProviderSpec | Seller, *, may_move: bool = False) -> Task[Any, Any]:
    """`make_images` with as many retries as the provider's block asks for. `may_move`: a
    route member with others to move to, so a submit refused before anything was created is
    not retried here (the route sends it elsewhere at once)."""
    block = provider.block if isinstance(provider, Seller) else provider
    retries = block.retries if isinstance(block, ProviderCredentials) else RETRIES
    return _make_images_with(retries, may_move)


@functools.cache
def _make_images_with(retries: int, may_move: bool) -> Task[Any, Any]:
    if retries == RETRIES and not may_move:
        return make_images
    options: dict[str, Any] = {"retries": retries, "retry_delay_seconds": retry_delays(retries)}
    if may_move:
        options["retry_condition_fn"] = retry_unless_moving
    return make_images.with_options(**options)


@task(name="archive-images", **RETRY_OPTIONS)
async def archive_images(
    images: list[DownloadedImage],
    archive: Archive,
    key: str,
    job: Job,
    status: JobStatus,
    prompt: str,
    parents: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    row: int | None = None,
) -> list[ArchivedImage]:
    """Write each image once (content-addressed) with its sidecar, then the request's record.

    `row` and `extra` (a batch row's position and metadata columns) go in the sidecar too.
    """
    logger = get_run_logger()
    out, no_preview = await write_images(
        images, archive, key, job, status, prompt, parents, extra, row
    )
    for sha, why in no_preview:
        logger.warning("no preview for %s: %s", sha[:12], why)
    logger.debug(  # the artifact and the sidecar say it; a line an image costs (#36)
        "archived %d image(s) of %s job %s under %s",
        len(out),
        job.provider,
        job.job_id,
        archive.basepath,
    )
    return out
