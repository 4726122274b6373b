"""The job record's state machine (engine/job_record): every transition its docstring draws,
walked on a real archive folder with the functions the paying paths use, and the moves it
refuses. Pure: no Prefect, no provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptimg_flows.archive.layout import batch_rel, job_rel, result_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.engine.job_record import (
    MOVES,
    NO_PAYING,
    RecordMoveRefused,
    State,
    advance,
    classify,
    mark_batched,
    state_of,
)
from gptimg_flows.engine.records import end_claim, try_claim
from gptimg_flows.models import Job

KEY = "k" * 64
SUBMITTING = {"state": "submitting", "key": KEY, "provider": "scenario"}


def _job(key: str = KEY) -> dict[str, object]:
    job = Job(provider="scenario", model="gpt-image-2", job_id="job-1", key=key, n=1)
    return {"state": "submitted", "job": job.model_dump(mode="json")}


def _archived(archive: Archive, tmp_path: Path, key: str = KEY) -> None:
    image = tmp_path / "archive" / "images" / "ab" / "x.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"png")
    archived = {
        "uri": str(image),
        "sidecar_uri": str(image.with_suffix(".json")),
        "sha256": "ab" * 32,
        "mime": "image/png",
        "width": 1,
        "height": 1,
        "size_bytes": 3,
        "provider": "scenario",
        "model": "gpt-image-2",
        "prompt": "p",
    }
    archive.write_json(result_rel(key), {"key": key, "job_id": "job-1", "images": [archived]})


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive(str(tmp_path / "archive"))


def test_every_transition_the_docstring_draws(archive: Archive, tmp_path: Path) -> None:
    seen: list[tuple[State, State]] = []

    def now() -> State:
        return state_of(archive, KEY).state

    def step(expected: State) -> None:
        before = seen[-1][1] if seen else State.NONE
        assert now() is expected, (before, now(), expected)
        advance(before, expected)  # the machine allows it
        seen.append((before, expected))

    assert now() is State.NONE
    # NONE -> SUBMITTING (an exclusive claim) -> NONE (refused: withdrawn)
    claim = try_claim(archive, KEY, SUBMITTING)
    assert claim.owner is not None and claim.record is not None
    step(State.SUBMITTING)
    assert try_claim(archive, KEY, SUBMITTING).owner is None, "a second claim must lose"
    archive.delete(job_rel(KEY))
    step(State.NONE)
    # NONE -> SUBMITTING -> UNCERTAIN (answer lost) -> NONE (the provider has none)
    claim = try_claim(archive, KEY, SUBMITTING)
    assert claim.record is not None
    step(State.SUBMITTING)
    end_claim(archive, KEY, claim.record)
    step(State.UNCERTAIN)
    archive.delete(job_rel(KEY))
    step(State.NONE)
    # NONE -> SUBMITTING -> UNCERTAIN -> SUBMITTED (found by our key)
    claim = try_claim(archive, KEY, SUBMITTING)
    assert claim.record is not None
    step(State.SUBMITTING)
    end_claim(archive, KEY, claim.record)
    step(State.UNCERTAIN)
    archive.write_json(job_rel(KEY), _job())
    step(State.SUBMITTED)
    # SUBMITTED -> ARCHIVED
    _archived(archive, tmp_path)
    step(State.ARCHIVED)
    # another request: NONE -> SUBMITTING -> SUBMITTED (the answer)
    other = "o" * 64
    claim = try_claim(archive, other, {**SUBMITTING, "key": other})
    assert state_of(archive, other).state is State.SUBMITTING
    archive.write_json(job_rel(other), _job(other))
    assert state_of(archive, other).state is State.SUBMITTED
    seen += [(State.NONE, State.SUBMITTING), (State.SUBMITTING, State.SUBMITTED)]
    # a batch line: NONE -> BATCHED -> NONE (its batch never came to be) / -> ARCHIVED
    line = "b" * 64
    assert mark_batched(archive, line, "rec1") is None
    assert state_of(archive, line).state is State.NONE, "no batch record yet: not held"
    archive.write_json(batch_rel("rec1"), {"state": "creating"})
    assert state_of(archive, line).state is State.BATCHED
    seen += [(State.NONE, State.BATCHED), (State.BATCHED, State.NONE)]
    _archived(archive, tmp_path, line)
    assert state_of(archive, line).state is State.ARCHIVED
    seen.append((State.BATCHED, State.ARCHIVED))
    # NONE -> ARCHIVED (images found, e.g. rebuilt from sidecars)
    seen.append((State.NONE, State.ARCHIVED))

    drawn = {(a, b) for a, targets in MOVES.items() for b in targets}
    assert drawn == set(seen), f"not walked: {drawn - set(seen)}; not drawn: {set(seen) - drawn}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.SUBMITTED, State.NONE),
        (State.SUBMITTED, State.BATCHED),
        (State.SUBMITTED, State.SUBMITTING),
        (State.UNCERTAIN, State.BATCHED),
        (State.UNCERTAIN, State.SUBMITTING),
        (State.BATCHED, State.SUBMITTING),
        (State.ARCHIVED, State.NONE),
    ],
)
def test_moves_that_could_pay_twice_are_refused(old: State, new: State) -> None:
    with pytest.raises(RecordMoveRefused):
        advance(old, new)


@pytest.mark.parametrize(
    ("record", "state"),
    [
        ({"state": "submitting", "lease_until": "2026-01-01T00:00:00+00:00"}, State.UNCERTAIN),
        (_job(), State.SUBMITTED),
        ([1, 2], State.UNCERTAIN),  # damaged: nobody pays until a person looks
    ],
)
def test_a_batch_line_never_overwrites_a_paid_or_possibly_paid_record(
    archive: Archive, record: object, state: State
) -> None:
    archive.write_json(job_rel(KEY), record)
    held = mark_batched(archive, KEY, "rec")
    assert held is not None and held.state is state
    assert state in NO_PAYING
    assert archive.read_json(job_rel(KEY)) == record, "the evidence of a payment was overwritten"


def test_a_live_claim_is_submitting_and_holds_every_path(archive: Archive) -> None:
    claim = try_claim(archive, KEY, SUBMITTING)
    found = classify(archive, KEY, claim.record)
    assert found.state is State.SUBMITTING and not found.may_pay
    assert mark_batched(archive, KEY, "rec") is not None
