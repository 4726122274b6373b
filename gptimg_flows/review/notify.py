"""Telling a person that a run awaits review, and giving up on a review nobody answers.

Both are server-side automations (open-source Prefect, no Cloud feature), so they work when no
process of ours is alive: a suspended run has exited, and only the server can notice it.

- `install_review_notification`: every flow run entering a Paused or Suspended state (events
  `prefect.flow-run.Paused` / `prefect.flow-run.Suspended`) POSTs a JSON message to a URL
  (a `Webhook` block and a `call-webhook` action), with the run's name, id, flow and UI link.
- `schedule_review_timeout`: a per-run proactive automation — after the run's
  `prefect.flow-run.Suspended` event, if no further state event arrives within N seconds,
  the server resumes the run with no input (`resume-flow-run`). The run restarts, its
  `asuspend_flow_run(..., key=...)` returns a default input, and review/pause.py, finding no stored
  response, tells that nobody answered, so it applies on_review_timeout (reject, approve).
"""

from __future__ import annotations

import json
from datetime import timedelta
from uuid import UUID

from prefect.blocks.webhook import Webhook
from prefect.client.orchestration import PrefectClient, get_client
from prefect.events.actions import CallWebhook, ResumeFlowRun
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.types import SecretDict
from pydantic import SecretStr

__all__ = [
    "DEFAULT_PAYLOAD",
    "PAUSE_EVENTS",
    "clear_review_timeout",
    "install_review_notification",
    "remove_review_notification",
    "review_payload",
    "review_timeout_name",
    "schedule_review_timeout",
]

# The server emits `prefect.flow-run.<state name>`: `apause_flow_run` proposes a state named
# "Paused", `asuspend_flow_run` one named "Suspended" (both of type PAUSED).
PAUSE_EVENTS = frozenset({"prefect.flow-run.Paused", "prefect.flow-run.Suspended"})

# Events that end a suspension: resumed (by a person or the timeout: Scheduled "Resuming"),
# or given up (cancelled, failed by an expired pause timeout, ...). `Suspended` itself must
# not be listed: an event matching both `after` and `expect` would count as the answer.
_AFTER_SUSPENSION = frozenset(
    f"prefect.flow-run.{name}"
    for name in (
        "Resuming",
        "Scheduled",
        "AwaitingRetry",
        "Pending",
        "Running",
        "Completed",
        "Failed",
        "Crashed",
        "Cancelling",
        "Cancelled",
        "TimedOut",
        "Paused",
    )
)

# Rendered by the server (sandboxed Jinja): `flow_run` and `flow` are fetched from the API for
# the event's resources; `ui_url` is Prefect's filter, whose base is the *server's*
# PREFECT_UI_URL (else its PREFECT_API_URL minus /api; with neither it renders None), hence
# `review_payload(ui_url=...)`. `tojson` keeps quotes in names from breaking the JSON (it
# writes ' < > & as \u0027 ...). "text" is what Slack/Mattermost incoming webhooks show.
_PAYLOAD = """\
{% set link = __LINK__ %}{
  "text": {{ ("Flow run " ~ flow_run.name ~ " (flow " ~ flow.name ~ ") awaits review: "
             ~ link) | tojson }},
  "flow_run_id": "{{ flow_run.id }}",
  "flow_run_name": {{ flow_run.name | tojson }},
  "flow_name": {{ flow.name | tojson }},
  "state": {{ event.resource["prefect.state-name"] | tojson }},
  "url": {{ link | tojson }},
  "occurred": "{{ event.occurred }}"
}"""


def review_payload(ui_url: str | None = None) -> str:
    """The default webhook body (a Jinja template of a JSON object).

    `ui_url` is the UI's address as reviewers reach it (e.g. https://prefect.example.com);
    without it the link comes from the server's own settings, which may be absent or internal.
    """
    if ui_url is None:
        link = "flow_run | ui_url"
    else:
        link = f"{json.dumps(ui_url.rstrip('/') + '/runs/flow-run/')} ~ flow_run.id"
    return _PAYLOAD.replace("__LINK__", link)


DEFAULT_PAYLOAD = review_payload()


async def _upsert_automation(client: PrefectClient, automation: AutomationCore) -> UUID:
    """Create the automation, or replace the one of that name (and drop duplicates), so that
    installing twice leaves one automation that fires once.

    Not `client.update_automation`: in Prefect 3.9 it sends `exclude_unset`, which drops each
    action's `type` (a default), so the server reads e.g. `resume-flow-run` as `do-nothing`;
    and the PUT body may not carry `owner_resource`.
    """
    existing = await client.read_automations_by_name(automation.name)
    if not existing:
        return await client.create_automation(automation)
    keep, *extra = existing
    response = await client.request(
        "PUT",
        "/automations/{id}",
        path_params={"id": keep.id},
        json=automation.model_dump(mode="json", exclude={"owner_resource"}),
    )
    response.raise_for_status()
    for duplicate in extra:
        await client.delete_automation(duplicate.id)
    return keep.id


async def install_review_notification(
    url: str,
    *,
    name: str = "gptimg-review-waiting",
    payload: str | None = None,
    ui_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> UUID:
    """Make the server POST to `url` whenever a flow run pauses or suspends for review.

    Saves a `Webhook` block and an automation both called `name` (re-running updates them).
    `payload` is a Jinja template rendered by the server (default: `review_payload(ui_url)`,
    JSON with the run's name, id, flow and UI link). Returns the automation's id.
    """
    block = Webhook(
        method="POST",
        url=SecretStr(url),
        headers=SecretDict(headers or {"Content-Type": "application/json"}),
    )
    block_id = await block.asave(name, overwrite=True)
    automation = AutomationCore(
        name=name,
        description="Tell a reviewer that a flow run is paused/suspended waiting for input.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            expect=set(PAUSE_EVENTS),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            CallWebhook(block_document_id=block_id, payload=payload or review_payload(ui_url))
        ],
    )
    async with get_client() as client:
        return await _upsert_automation(client, automation)


async def remove_review_notification(name: str = "gptimg-review-waiting") -> None:
    """Delete the automation and webhook block `install_review_notification` saved (if any)."""
    async with get_client() as client:
        for automation in await client.read_automations_by_name(name):
            await client.delete_automation(automation.id)
        try:
            document = await client.read_block_document_by_name(name, "webhook")
        except ObjectNotFound:
            return
        if document.id is not None:
            await client.delete_block_document(document.id)


def review_timeout_name(flow_run_id: UUID) -> str:
    """The name of a run's review-timeout automation (one per run)."""
    return f"gptimg-review-timeout-{flow_run_id}"


async def schedule_review_timeout(flow_run_id: UUID, seconds: float) -> UUID:
    """Have the server resume the run, without input, if it stays suspended `seconds`.

    Call it just before `asuspend_flow_run` (which should get no Prefect `timeout`: a run
    resumed after its pause timeout is failed, not resumed). The clock starts at the run's
    `prefect.flow-run.Suspended` event; the server checks every
    PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY (5 s) and its actions service then resumes
    the run, so it fires a few seconds late (measured: 3-6 s).
    Minimum 10 s (Prefect's floor for proactive triggers). Idempotent per run: an existing
    one is kept, not replaced.
    """
    resource = f"prefect.flow-run.{flow_run_id}"
    automation = AutomationCore(
        name=review_timeout_name(flow_run_id),
        description=f"Resume flow run {flow_run_id} without input if nobody reviews it.",
        trigger=EventTrigger(
            match={"prefect.resource.id": resource},
            # Per-resource buckets: a bucket opens only on the Suspended event (without
            # for_each the server opens one at once, starting the clock before the suspend).
            for_each={"prefect.resource.id"},
            after={"prefect.flow-run.Suspended"},
            expect=set(_AFTER_SUSPENSION),
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=max(seconds, 10.0)),
        ),
        actions=[ResumeFlowRun()],
        owner_resource=resource,
    )
    async with get_client() as client:
        # Kept as is if it exists (the run restarting after a resume calls this again):
        # replacing it would reset its trigger, and the clock of a suspended run with it.
        if existing := await client.read_automations_by_name(automation.name):
            return existing[0].id
        return await client.create_automation(automation)


async def clear_review_timeout(flow_run_id: UUID) -> None:
    """Delete the run's review-timeout automation; doing nothing if there is none."""
    async with get_client() as client:
        for automation in await client.read_automations_by_name(review_timeout_name(flow_run_id)):
            await client.delete_automation(automation.id)
