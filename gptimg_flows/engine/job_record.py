"""The job record's state machine: what the record(s) of one request say, and what every path
that can pay (a synchronous submit, a route member, a Batch API line, an edit batch, a chunk run)
may do about it. Every paying path asks `recorded` before paying, under every key the request
may be recorded under, and moves a record only through `advance`. No Prefect.

States of `_jobs/<key>.json` (and `_results/<key>.json`, which ends them):

    NONE ──claim (exclusive create)──▶ SUBMITTING ──answer with a job──▶ SUBMITTED
     │                                   │  │                                │
     │          nothing was created ◀────┘  └─ answer lost or ambiguous      │ polled, downloaded,
     │          (429, 503, 4xx, refused      (500/502/504, reset, timeout     │ archived
     │           connection): withdrawn       after sending): UNCERTAIN       ▼
     │                                            │   │                    ARCHIVED
     │        the provider says it has none ◀─────┘   └─ the provider finds it ──▶ SUBMITTED
     │        (Runware, by our taskUUID)                 (or, where it cannot be asked, stays
     │                                                    UNCERTAIN: SubmitUncertain, until a
     │                                                    re-make of just that request)
     └──batched (exclusive create)──▶ BATCHED ──its batch's line archived──▶ ARCHIVED
                                        └─ its batch record never came to be: NONE again

- SUBMITTING is a live claim (its owner renews a lease while the paid call is in flight): every
  other path waits for it to settle. Once its owner is gone it is UNCERTAIN.
- SUBMITTED is never overwritten: whichever path meets it resumes that job (a batch re-run polls
  the synchronous job, a route resumes at the member on record).
- UNCERTAIN stops every paying path with SubmitUncertain and its fix, unless the provider can be
  asked by our key.
- BATCHED, while its batch record exists, sends every path to that batch.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptimg_flows.archive.layout import batch_rel, job_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.engine.records import claim_alive, member_of_record, read_result
from gptimg_flows.models import ArchivedImage


class State(enum.Enum):
    NONE = "none"
    SUBMITTING = "submitting"  # a live claim: its paid call is in flight
    UNCERTAIN = "uncertain"  # a claim whose answer was lost: it may have been billed
    SUBMITTED = "submitted"  # a job on record: resume it
    BATCHED = "batched"  # a line of a recorded Batch API batch
    ARCHIVED = "archived"  # its images are in the archive


#: The moves a record may make (anything else is a bug in a paying path).
MOVES: dict[State, frozenset[State]] = {
    State.NONE: frozenset({State.SUBMITTING, State.BATCHED, State.ARCHIVED}),
    State.SUBMITTING: frozenset({State.SUBMITTED, State.NONE, State.UNCERTAIN}),
    State.UNCERTAIN: frozenset({State.SUBMITTED, State.NONE}),
    State.SUBMITTED: frozenset({State.ARCHIVED}),
    State.BATCHED: frozenset({State.ARCHIVED, State.NONE}),
    State.ARCHIVED: frozenset(),
}

#: States in which no path may pay for the request again.
NO_PAYING = frozenset({State.SUBMITTING, State.UNCERTAIN, State.SUBMITTED, State.BATCHED})


class RecordMoveRefused(AssertionError):
    """A paying path tried to move a record where the state machine does not go."""


def advance(old: State, new: State) -> State:
    """`new`, if a record in `old` may move there; RecordMoveRefused otherwise."""
    if new not in MOVES[old]:
        raise RecordMoveRefused(f"a job record may not go from {old.value} to {new.value}")
    return new


@dataclass(frozen=True)
class Recorded:
    """What one key's records say."""

    key: str
    state: State
    record: dict[str, Any] | None = None
    images: list[ArchivedImage] | None = None

    @property
    def may_pay(self) -> bool:
        return self.state is State.NONE

    @property
    def member(self) -> str | None:
        """The route member a record names (where the request stays)."""
        return member_of_record(self.record)

    @property
    def made_by(self) -> str | None:
        """The provider a record's job (or claim) names."""
        record = self.record or {}
        job = record.get("job")
        provider = job.get("provider") if isinstance(job, dict) else record.get("provider")
        return provider if isinstance(provider, str) else None


def state_of(archive: Archive, key: str, *, results: bool = True) -> Recorded:
    """The state of one key, read from the archive (blocking: call it in a thread)."""
    if results and (images := read_result(archive, key)):
        return Recorded(key, State.ARCHIVED, images=images)
    record = archive.read_json(job_rel(key))
    return classify(archive, key, record)


def classify(archive: Archive, key: str, record: Any) -> Recorded:
    """A job record's state (a damaged, non-object record counts as UNCERTAIN: nobody may
    pay until a person looks at it)."""
    if record is None:
        return Recorded(key, State.NONE)
    if not isinstance(record, dict):
        return Recorded(key, State.UNCERTAIN, {"damaged": True})
    if record.get("job"):
        return Recorded(key, State.SUBMITTED, record)
    if record.get("state") == "batched":
        batch = record.get("batch")
        if batch and archive.read_json(batch_rel(str(batch))) is not None:
            return Recorded(key, State.BATCHED, record)
        return Recorded(key, State.NONE, record)  # its batch was never created
    if claim_alive(record):
        return Recorded(key, State.SUBMITTING, record)
    return Recorded(key, State.UNCERTAIN, record)


async def recorded(archive: Archive, keys: Sequence[str]) -> Recorded:
    """What the records of a request say, under every key it may be recorded under (the route
    key, each member's own, the key before it was routed), in the order given: its images
    wherever they are archived, else the first key whose record stops paying, else NONE under
    the first key (where a new submit is claimed)."""
    found = await asyncio.to_thread(_recorded, archive, list(keys))
    return found


def _recorded(archive: Archive, keys: list[str]) -> Recorded:
    states = []
    for key in keys:
        if images := read_result(archive, key):
            return Recorded(key, State.ARCHIVED, images=images)
    for key in keys:
        state = state_of(archive, key, results=False)
        if state.state in NO_PAYING:
            return state
        states.append(state)
    return Recorded(keys[0], State.NONE, states[0].record if states else None)


def mark_batched(archive: Archive, key: str, batch: str) -> Recorded | None:
    """NONE → BATCHED for one line of batch `batch`, with an exclusive create (or over a
    record whose batch never came to be, or one of this same batch). Returns the record that
    stops it (another path holds the request), None when marked."""
    line = {"state": "batched", "batch": batch}
    if archive.create_json(job_rel(key), line):
        return None
    now = classify(archive, key, archive.read_json(job_rel(key)))
    same = now.record is not None and now.record.get("batch") == batch
    if now.state is State.NONE or (now.state is State.BATCHED and same):
        archive.write_json(job_rel(key), line)
        return None
    return now
