"""When distributed_batch gives up on a chunk run that never started, decided without a
server: Pending past the bound, or Scheduled past it with no online worker in its pool."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from prefect.client.schemas.objects import FlowRun, State, StateType

from gptimg_flows.distributed.watch import unstarted_reason

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _run(kind: StateType, seconds_ago: float, due_seconds_ago: float | None = None) -> FlowRun:
    state: State[None] = State(type=kind, timestamp=NOW - timedelta(seconds=seconds_ago))
    due = NOW - timedelta(seconds=due_seconds_ago) if due_seconds_ago is not None else None
    return FlowRun(
        id=uuid.uuid4(),
        name="chunk",
        flow_id=uuid.uuid4(),
        state=state,
        expected_start_time=due,
        work_pool_name="gptimg-process",
    )


def test_a_run_pending_past_the_bound_was_left_by_a_dead_worker() -> None:
    why = unstarted_reason(_run(StateType.PENDING, 61), NOW, 60, pool_online=True)
    assert why is not None and "never started it" in why
    assert unstarted_reason(_run(StateType.PENDING, 59), NOW, 60, pool_online=True) is None


def test_a_late_run_is_given_up_on_only_when_its_pool_has_no_online_worker() -> None:
    late = _run(StateType.SCHEDULED, 300, due_seconds_ago=120)
    why = unstarted_reason(late, NOW, 60, pool_online=False)
    assert why is not None and "no online worker" in why and "'gptimg-process'" in why
    assert unstarted_reason(late, NOW, 60, pool_online=True) is None, "a worker will take it"
    assert unstarted_reason(late, NOW, 60, pool_online=None) is None, "no word: wait"
    due_soon = _run(StateType.SCHEDULED, 300, due_seconds_ago=30)
    assert unstarted_reason(due_soon, NOW, 60, pool_online=False) is None


def test_running_and_ended_runs_are_never_given_up_on_here() -> None:
    for kind in (StateType.RUNNING, StateType.COMPLETED, StateType.CRASHED):
        assert unstarted_reason(_run(kind, 3600), NOW, 60, pool_online=False) is None
