"""Review before the next paid step, on a real Prefect API: the run pauses with the candidates
in its Resume form, and only what a person approves goes on.

Answers are sent the way a script or chat bot sends them (`resume_flow_run` with `run_input`),
the same call the UI's Resume form makes; the browser test clicks the form itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import aresume_flow_run

from gptimg_flows import batch_generate, generate_edit_archive, generate_images, review_images
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.providers.offline import OfflineProvider
from gptimg_flows.results import BatchResult, PipelineResult

from .support.prefect_api import api_post, artifacts

pytestmark = pytest.mark.usefixtures("prefect_server")
T = TypeVar("T")


@pytest.fixture
def submits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every paid call the offline provider receives (its prompt)."""
    calls: list[str] = []
    original = OfflineProvider.submit

    async def counting(self: OfflineProvider, request: Any, inputs: Any, key: str) -> Any:
        calls.append(request.prompt)
        return await original(self, request, inputs, key)

    monkeypatch.setattr(OfflineProvider, "submit", counting)
    return calls


async def paused_run(since: datetime, seen: set[str], timeout: float = 60) -> dict[str, Any]:
    """The next flow run (started after `since`, not in `seen`) to reach Paused."""
    body = {
        "flow_runs": {
            "state": {"type": {"any_": ["PAUSED"]}},
            "start_time": {"after_": since.isoformat()},
        }
    }
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for run in await api_post("/flow_runs/filter", body):
            if run["id"] not in seen:
                seen.add(run["id"])
                return dict(run)
        await asyncio.sleep(0.3)
    raise AssertionError("no run paused for review")


async def form_of(run: dict[str, Any]) -> str:
    """The markdown the Resume form shows above its fields."""
    key = f"paused-{run['state']['state_details']['pause_key']}-description"
    async with get_client() as client:
        for _ in range(40):  # saved just after the state changes
            try:
                return str(json.loads(await client.read_flow_run_input(run["id"], key)))
            except Exception:
                await asyncio.sleep(0.25)
    raise AssertionError(f"no form description under {key}")


async def reviewed(flow_call: Awaitable[T], *answers: dict[str, Any] | None) -> tuple[T, list[str]]:
    """Run the flow; answer each pause in turn (None: let it time out). Returns the flow's
    result and each form's markdown."""
    since, seen, forms = datetime.now(UTC), set[str](), []
    running = asyncio.ensure_future(flow_call)
    for answer in answers:
        run = await paused_run(since, seen)
        seen.discard(run["id"])  # the same run may pause again (next round)
        forms.append(await form_of(run))
        if answer is not None:
            await aresume_flow_run(run["id"], run_input=answer)
        await _left_paused(run["id"], run["state"]["state_details"]["pause_key"])
    return await asyncio.wait_for(running, 120), forms


async def _left_paused(run_id: str, pause_key: str) -> None:
    for _ in range(300):
        [run] = await api_post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        state = run["state"]
        if state["type"] != "PAUSED" or state["state_details"]["pause_key"] != pause_key:
            return
        await asyncio.sleep(0.2)


def sidecar(uri: str) -> dict[str, Any]:
    return dict(json.loads(Path(uri).with_suffix(".json").read_text()))


async def test_only_the_approved_candidate_is_edited_and_paid_for(
    archive_dir: Path, submits: list[str]
) -> None:
    result, [form] = await reviewed(
        generate_edit_archive(
            prompt="review: a lighthouse",
            edit_prompt="review: add a storm",
            n=3,
            provider="offline",
            archive=str(archive_dir),
            size="128x128",
            review=True,
        ),
        {"approved": [2], "note": "the second one"},
    )
    assert isinstance(result, PipelineResult)
    assert form.count("data:image/webp;base64,") == 3, form
    assert "| **1** |" in form and "| **3** |" in form
    assert submits == ["review: a lighthouse", "review: add a storm"], "one generate, one edit"

    first, second, third = result.generated
    assert [i.review.status for i in result.generated if i.review] == [
        "rejected",
        "approved",
        "rejected",
    ]
    assert second.review and second.review.note == "the second one" and second.review.round == 1
    [edited] = result.edited
    assert edited.parents == [second.uri]
    assert sidecar(second.uri)["review"]["status"] == "approved"
    assert sidecar(first.uri)["review"]["status"] == "rejected"
    assert sidecar(third.uri)["review"]["note"] == "the second one"
    [rnd] = result.reviews
    assert rnd.approved == [2] and rnd.candidates == 3 and not rnd.timed_out

    found = await artifacts()
    review_md = next(a for a in found if a["key"] == "generate-edit-archive-review")["data"]
    assert "Approved: **2** of 3" in review_md and "the second one" in review_md
    pipeline = next(a for a in found if a["key"] == "generate-edit-archive")["data"]
    assert "✅ approved" in pipeline and "❌ rejected" in pipeline
    assert pipeline.count("data:image/webp;base64,") == 3 + 2, "3 candidates, 1 edit + source"


async def test_none_approved_completes_and_pays_nothing_more(
    archive_dir: Path, submits: list[str]
) -> None:
    result, _ = await reviewed(
        generate_edit_archive(
            prompt="review: a pier",
            edit_prompt="review: add gulls",
            n=2,
            provider="offline",
            archive=str(archive_dir),
            size="128x128",
            review=True,
        ),
        {"approved": [], "note": "neither"},
    )
    assert result.edited == [] and submits == ["review: a pier"]
    assert all(i.review and i.review.status == "rejected" for i in result.generated)


async def test_a_new_prompt_makes_a_second_round_and_the_first_counts_as_rejected(
    archive_dir: Path, submits: list[str]
) -> None:
    result, forms = await reviewed(
        generate_edit_archive(
            prompt="review: a red barn",
            edit_prompt="review: add snow",
            n=2,
            provider="offline",
            archive=str(archive_dir),
            size="128x128",
            review=True,
            max_review_rounds=2,
        ),
        {"approved": [], "new_prompt": "review: a blue barn"},
        {"approved": [1]},
    )
    assert "round 1 of at most 2" in forms[0] and "round 2 of at most 2" in forms[1]
    assert "a blue barn" in forms[1]
    assert submits == ["review: a red barn", "review: a blue barn", "review: add snow"]
    assert [i.prompt for i in result.generated] == ["review: a red barn"] * 2 + [
        "review: a blue barn"
    ] * 2
    rounds = [(i.review.round, i.review.status) for i in result.generated if i.review]
    assert rounds == [(1, "rejected"), (1, "rejected"), (2, "approved"), (2, "rejected")]
    assert result.edited[0].parents == [result.generated[2].uri]
    assert [r.new_prompt for r in result.reviews] == ["review: a blue barn", None]


async def test_an_answer_naming_no_candidate_is_asked_again(
    archive_dir: Path, submits: list[str]
) -> None:
    images, forms = await reviewed(
        generate_images(
            prompt="review: a kite",
            n=2,
            provider="offline",
            archive=str(archive_dir),
            size="128x128",
            review=True,
        ),
        {"approved": [7]},
        {"approved": [1]},
    )
    assert "there is no candidate 7" in forms[1]
    assert [i.review.status for i in images if i.review] == ["approved", "rejected"]
    assert submits == ["review: a kite"]


@pytest.mark.parametrize("decision", ["reject", "approve"])
async def test_nobody_answering_decides_by_on_review_timeout(
    archive_dir: Path, submits: list[str], decision: str
) -> None:
    result, _ = await reviewed(
        generate_edit_archive(
            prompt=f"review: timeout {decision}",
            edit_prompt="review: add a moon",
            n=2,
            provider="offline",
            archive=str(archive_dir),
            size="128x128",
            review=True,
            review_timeout_seconds=2,
            on_review_timeout=decision,
        ),
        None,
    )
    assert len(result.edited) == (2 if decision == "approve" else 0)
    status = "approved" if decision == "approve" else "rejected"
    for image in result.generated:
        assert image.review and image.review.status == status and image.review.timed_out
        assert "timed out" in image.review.note
        assert sidecar(image.uri)["review"]["timed_out"] is True
    assert result.reviews[0].timed_out


async def test_a_rerun_with_review_pays_nothing_again(
    archive_dir: Path, submits: list[str]
) -> None:
    kwargs: dict[str, Any] = dict(
        prompt="review: a windmill",
        edit_prompt="review: add clouds",
        n=2,
        provider="offline",
        archive=str(archive_dir),
        size="128x128",
        review=True,
    )
    first, _ = await reviewed(generate_edit_archive(**kwargs), {"approved": [1]})
    paid = list(submits)
    again, _ = await reviewed(generate_edit_archive(**kwargs), {"approved": [1]})
    assert submits == paid, "the second run paid again"
    assert again.cost == {"usd": 0.0} or all(i.from_archive for i in again.generated)
    assert [i.sha256 for i in again.edited] == [i.sha256 for i in first.edited]


async def test_a_batch_review_shows_the_gallery_in_row_order(
    archive_dir: Path, submits: list[str]
) -> None:
    prompts = [f"review batch {i}" for i in range(4)]
    result, [form] = await reviewed(
        batch_generate(
            prompts=prompts,
            provider="offline",
            archive=str(archive_dir),
            size="128x128",
            review=True,
        ),
        {"approved": [1, 4], "note": "ends only"},
    )
    assert isinstance(result, BatchResult)
    assert form.count("data:image/webp;base64,") == 4
    assert [i.row for i in result.images] == [0, 1, 2, 3]
    assert [i.review.status for i in result.images if i.review] == [
        "approved",
        "rejected",
        "rejected",
        "approved",
    ]
    assert len(submits) == 4


async def test_bad_review_options_are_refused_before_anything_is_paid(
    archive_dir: Path, submits: list[str]
) -> None:
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="on_review_timeout"):  # the typed form says it
        await generate_images(
            prompt="x",
            provider="offline",
            archive=str(archive_dir),
            review=True,
            on_review_timeout="maybe",
        )  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="review_timeout_seconds"):
        await generate_edit_archive(
            prompt="x",
            edit_prompt="y",
            provider="offline",
            archive=str(archive_dir),
            review=True,
            review_timeout_seconds=0,
        )
    assert submits == []


def test_review_images_is_public_api() -> None:
    import inspect

    params = inspect.signature(review_images).parameters
    assert {"candidates", "archive", "prompt", "timeout_seconds", "on_timeout"} <= set(params)


async def test_review_works_between_the_two_batches_of_a_batch_api_pipeline(
    archive_dir: Path, emulator: Any, provider_block: Any
) -> None:
    """The candidates come back from one batch, a person approves one, and only that one
    goes to the second batch: two batches, three lines in all."""
    emulator.configure(latency=0.3)
    result, [form] = await reviewed(
        generate_edit_archive(
            prompt="review: a batch lighthouse",
            edit_prompt="review: add a batch storm",
            n=2,
            provider=provider_block("openai"),
            archive=str(archive_dir),
            size="1024x1024",
            quality="low",
            review=True,
            batch_api=True,
            batch_poll_seconds=0.2,
        ),
        {"approved": [1]},
    )
    assert isinstance(result, PipelineResult)
    assert form.count("data:image/webp;base64,") == 2, form
    batches = emulator.ledger()["batches"]
    assert [b["lines"] for b in batches] == [1, 1], batches
    [edited] = result.edited
    assert edited.parents == [result.generated[0].uri]
    assert edited.job_id == batches[1]["batch_id"]
