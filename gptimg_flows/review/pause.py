"""A person approves candidates before the next paid step: pause, show, decide, record.

The run pauses with a Resume form (`ReviewInput`) whose description shows the candidates as
thumbnails numbered from 1. Its field names (`approved`, `new_prompt`, `note`) are public API:
a person answers in the UI, a script or chat bot with
`resume_flow_run(id, run_input={"approved": [1], "note": "…"})`.

Locally the run pauses and this process waits. Under a worker (a deployment's run) it suspends
instead: the process ends, the worker is free, and when the run is resumed it starts again from
the top, where every paid step before the review is answered from the archive (nothing is paid
twice) and the same pause key hands back the stored answer.

Nobody answering is decided by `on_timeout`: the run is resumed with no answer when
`timeout_seconds` have passed (by this process locally; by a one-off automation on the server
for a suspended run, which has no process), and "resumed with no answer" is the timeout.
Prefect's own pause timeout is set later than ours only as a backstop: a pause that expires in
Prefect fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import PrefectHTTPStatusError
from prefect.flow_runs import apause_flow_run, aresume_flow_run, asuspend_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from gptimg_flows.archive.store import Archive
from gptimg_flows.engine.artifacts import Shown, publish_review, review_form_markdown, show
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.models import ArchivedImage, ReviewRecord
from gptimg_flows.results import ReviewRound

OnTimeout = Literal["reject", "approve"]
#: Prefect fails a run whose pause outlives its own timeout: ours fires this much earlier.
BACKSTOP_SECONDS = 3600
#: How often a local pause looks for the answer (one API read each).
POLL_SECONDS = 2
#: Answers that cannot be used (a number with no candidate) are asked again this often.
MAX_ASKS = 3
DEFAULT_TIMEOUT_SECONDS = 86400.0
#: Candidates shown as thumbnails in the form and the review artifact; a larger batch's are
#: all in its gallery pages, numbered the same way.
REVIEW_THUMBS = 100


class ReviewInput(RunInput):
    """The Resume form. These three names are public API: keep them."""

    approved: list[int] = Field(
        default_factory=list,
        description="The numbers of the candidates to keep (from 1). Empty rejects them all.",
    )
    new_prompt: str | None = Field(
        default=None,
        description="Make a new round of candidates from this prompt instead.",
    )
    note: str = Field(default="", description="Free text, recorded with the decision.")


class Answer(BaseModel):
    approved: list[int] = Field(default_factory=list)
    new_prompt: str | None = None
    note: str = ""
    timed_out: bool = False


class ReviewDecision(BaseModel):
    """One round's outcome: the candidates (in their numbered order) with their review
    recorded, and what comes next."""

    candidates: list[ArchivedImage]
    new_prompt: str | None = None
    round: ReviewRound

    @property
    def approved(self) -> list[ArchivedImage]:
        return [i for i in self.candidates if i.review and i.review.status == "approved"]

    @property
    def rejected(self) -> list[ArchivedImage]:
        return [i for i in self.candidates if not (i.review and i.review.status == "approved")]


def check_review_options(timeout_seconds: float, on_timeout: str, max_rounds: int) -> None:
    """Refused before anything is paid, like every other bad input."""
    if not timeout_seconds > 0:
        raise InvalidRequest(
            f"review_timeout_seconds={timeout_seconds:g}; it must be a positive number of seconds",
            field="review_timeout_seconds",
        )
    if on_timeout not in ("reject", "approve"):
        raise InvalidRequest(
            f"on_review_timeout={on_timeout!r}; use 'reject' or 'approve'",
            field="on_review_timeout",
        )
    if max_rounds < 1:
        raise InvalidRequest(
            f"max_review_rounds={max_rounds}; it must be 1 or more", field="max_review_rounds"
        )


def _run_context() -> FlowRunContext:
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("review_images runs inside a flow run (it pauses that run)")
    return context


def suspends(context: FlowRunContext) -> bool:
    """A deployment's own run (not a subflow) is suspended, freeing its worker."""
    run = context.flow_run
    return run is not None and run.deployment_id is not None and run.parent_task_run_id is None


async def _stored_answer(run_id: UUID, key: str) -> dict[str, Any] | None:
    async with get_client() as client:
        try:
            raw = await client.read_flow_run_input(flow_run_id=run_id, key=key)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
    import json

    value = json.loads(raw)
    return value if isinstance(value, dict) else None


async def _resume_when_due(run_id: UUID, seconds: float) -> None:
    """Locally, nobody answering in time is a resume with no answer (as a suspended run's
    automation does)."""
    await asyncio.sleep(seconds)
    with contextlib.suppress(Exception):  # already answered, or the run moved on
        await aresume_flow_run(run_id)


async def ask(description: str, key: str, timeout_seconds: float) -> Answer:
    """Pause (or suspend) until answered; an answer already given for `key` is returned at
    once (a suspended run starting again from the top)."""
    context = _run_context()
    assert context.flow_run is not None
    run_id = context.flow_run.id
    form = ReviewInput.with_initial_data(description=description)
    backstop = int(timeout_seconds) + BACKSTOP_SECONDS
    if suspends(context):
        state_name = "suspended"
        from gptimg_flows.review.notify import clear_review_timeout, schedule_review_timeout

        if await _stored_answer(run_id, f"{state_name}-{key}-response") is None:
            await schedule_review_timeout(run_id, timeout_seconds)
        await asuspend_flow_run(wait_for_input=form, timeout=backstop, key=key)
        await clear_review_timeout(run_id)
    else:
        state_name = "paused"
        watchdog = asyncio.create_task(_resume_when_due(run_id, timeout_seconds))
        try:
            await apause_flow_run(
                wait_for_input=form, timeout=backstop, poll_interval=POLL_SECONDS, key=key
            )
        finally:
            watchdog.cancel()
    stored = await _stored_answer(run_id, f"{state_name}-{key}-response")
    if stored is None:
        return Answer(timed_out=True)
    return Answer.model_validate(
        {k: stored[k] for k in ("approved", "new_prompt", "note") if k in stored}
    )


def _problem(answer: Answer, count: int, check_prompt: Callable[[str], object] | None) -> str:
    """Why an answer cannot be used ('' when it can): asked again rather than guessed at."""
    wrong = sorted({n for n in answer.approved if not 1 <= n <= count})
    if wrong:
        return (
            f"there is no candidate {', '.join(map(str, wrong))} (they are numbered 1 to {count})"
        )
    if answer.approved and answer.new_prompt:
        return "approve candidates or ask for a new prompt, not both"
    if answer.new_prompt and check_prompt is not None:
        try:
            check_prompt(answer.new_prompt)
        except (InvalidRequest, ValueError) as exc:
            return f"new_prompt: {exc}"
    return ""


async def record_review(archive: Archive, image: ArchivedImage, record: ReviewRecord) -> None:
    """The decision in the image's sidecar too, where a later reader finds it."""
    rel = Archive.sidecar_rel(image.sha256)
    current = await asyncio.to_thread(archive.read_json, rel) or image.model_dump(mode="json")
    current["review"] = record.model_dump(mode="json")
    await asyncio.to_thread(archive.write_json, rel, current)


async def review_images(
    candidates: Sequence[ArchivedImage],
    archive: Archive,
    *,
    prompt: str,
    round_no: int = 1,
    max_rounds: int = 3,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_timeout: OnTimeout = "reject",
    key: str | None = None,
    check_prompt: Callable[[str], object] | None = None,
) -> ReviewDecision:
    """Show `candidates` in the Resume form and wait for a person's decision.

    Use it in your own flows before a paid step: only `decision.approved` should go on. Each
    candidate's `review` (and its sidecar) records the decision; `decision.new_prompt` asks
    for another round (honoured by the caller while `round_no < max_rounds`).
    """
    check_review_options(timeout_seconds, on_timeout, max_rounds)
    logger = get_run_logger()
    shown = await show(candidates[:REVIEW_THUMBS], archive)
    base = key or f"review-{round_no}"
    problem = ""
    answer = Answer(timed_out=True)
    for attempt in range(MAX_ASKS):
        description = review_form_markdown(
            shown, prompt, round_no, max_rounds, problem, total=len(candidates)
        )
        logger.info(
            "round %d: %d candidate(s) await review (Resume the run to answer)",
            round_no,
            len(candidates),
        )
        answer = await ask(
            description, base if attempt == 0 else f"{base}-{attempt}", timeout_seconds
        )
        problem = "" if answer.timed_out else _problem(answer, len(candidates), check_prompt)
        if not problem:
            break
        logger.warning("review answer not usable: %s", problem)
    else:
        answer = Answer(note=f"{answer.note} [not used: {problem}]".strip())
    if answer.timed_out:
        kept = list(range(1, len(candidates) + 1)) if on_timeout == "approve" else []
        note = f"review timed out after {timeout_seconds:g} s: {on_timeout}"
        answer = Answer(approved=kept, timed_out=True, note=note)
    new_prompt = (answer.new_prompt or "").strip() or None
    if new_prompt and round_no >= max_rounds:
        unused = f"[new prompt not used: max_review_rounds={max_rounds}]"
        answer = answer.model_copy(update={"note": f"{answer.note} {unused}".strip()})
        new_prompt = None
    decided = datetime.now(UTC)
    approved_set = set(answer.approved)
    reviewed: list[ArchivedImage] = []
    for n, image in enumerate(candidates, start=1):
        status: Literal["approved", "rejected"] = "approved" if n in approved_set else "rejected"
        record = ReviewRecord(
            status=status,
            note=answer.note,
            round=round_no,
            decided_at=decided,
            timed_out=answer.timed_out,
        )
        done = image.model_copy(update={"review": record})
        await record_review(archive, done, record)
        reviewed.append(done)
    rnd = ReviewRound(
        round=round_no,
        prompt=prompt,
        candidates=len(candidates),
        approved=sorted(approved_set),
        new_prompt=new_prompt,
        note=answer.note,
        timed_out=answer.timed_out,
        decided_at=decided,
    )
    logger.info(
        "round %d: approved %s of %d%s",
        round_no,
        rnd.approved or "none",
        len(candidates),
        " (timed out)" if rnd.timed_out else "",
    )
    return ReviewDecision(candidates=reviewed, new_prompt=new_prompt, round=rnd)


class ReviewLog:
    """The rounds of one run's review, published as one artifact after each round."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.rounds: list[ReviewRound] = []
        self.shown: list[list[Shown]] = []

    async def add(self, decision: ReviewDecision, archive: Archive) -> None:
        self.rounds.append(decision.round)
        self.shown.append(await show(decision.candidates[:REVIEW_THUMBS], archive))
        await publish_review(self.rounds, self.shown, self.key)
