"""What the flows return, and what it cost: plain pydantic values, no Prefect.

Providers bill in different currencies (usd, credits, cu…), so costs are kept per unit, summed
exactly and rounded once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from gptimg_flows.models import ArchivedImage


class ReviewRound(BaseModel):
    """One round of a review: what was shown, and what was decided."""

    round: int
    prompt: str
    candidates: int = Field(description="how many candidates were shown, numbered from 1")
    approved: list[int] = Field(default_factory=list, description="the numbers kept")
    new_prompt: str | None = None
    note: str = ""
    timed_out: bool = False
    decided_at: datetime


class PipelineResult(BaseModel):
    """Every candidate generated (each with its review, when reviewed), then the edits."""

    generated: list[ArchivedImage]
    edited: list[ArchivedImage]
    cost: dict[str, float] = Field(default_factory=dict, description="what this run spent")
    images_cost: dict[str, float] = Field(
        default_factory=dict, description="what the images cost when they were made"
    )
    reviews: list[ReviewRound] = Field(default_factory=list, description="with review=True")


class BatchFailure(BaseModel):
    """One row that produced no image; `job_id` names the paid job when there was one."""

    index: int = Field(description="the row's 0-based position in the input")
    prompt: str
    error: str
    error_type: str
    job_id: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="the row's metadata columns")


class BatchResult(BaseModel):
    """Images in input order (each with its `row`), then the rows that failed."""

    images: list[ArchivedImage]
    failures: list[BatchFailure]
    cost: dict[str, float] = Field(default_factory=dict, description="what this run spent")
    images_cost: dict[str, float] = Field(
        default_factory=dict, description="what the images cost when they were made"
    )
    reviews: list[ReviewRound] = Field(default_factory=list, description="with review=True")
    refused_submits: int = Field(
        0, description="submits the providers refused with 429 (nothing paid; tried again)"
    )
    rate_limit_wait_seconds: float = Field(
        0.0,
        description="time this run's submits spent waiting for the accounts' rate limits, "
        "summed over the submits (two waiting 10 s together: 20)",
    )
    rate_limit_held_seconds: float = Field(
        0.0,
        description="wall time in which at least one of this run's submits was waiting for a "
        "rate limit (two waiting 10 s together: 10)",
    )
    text_check_failed: int = Field(
        0, description="images whose text check failed (text_check='flag' or 'remake')"
    )
    route_failovers: int = Field(
        0, description="requests a route moved to another member (one was down or refused)"
    )
    route_spills: int = Field(
        0, description="requests a route moved to another member because a rate limit was full"
    )


class RowsFailed(Exception):
    """A batch with `fail_on_row_failure=True` in which a row made no image: raised once every
    row has been tried and every image made is archived, so the flow run (a schedule's run)
    ends Failed. `result` is the batch's result."""

    def __init__(self, message: str, result: BatchResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def rows_failed(result: BatchResult, total: int) -> RowsFailed:
    first = result.failures[0]
    return RowsFailed(
        f"{len(result.failures)} of {total} row(s) failed (fail_on_row_failure=True); the "
        f"{len(result.images)} image(s) made are archived. First: row {first.index}: "
        f"{first.error_type}: {first.error[:200]}",
        result,
    )


def total_cost(images: list[ArchivedImage]) -> dict[str, float]:
    """What the images cost when they were made, per unit."""
    out: dict[str, float] = {}
    for img in images:
        if img.cost is not None:
            unit = img.cost_unit or "?"
            out[unit] = out.get(unit, 0.0) + img.cost
    return {unit: round(v, 6) for unit, v in out.items()}  # rounded once, not per image


def spent_cost(images: list[ArchivedImage]) -> dict[str, float]:
    """What this run paid for them, per unit: nothing for images answered from the archive."""
    out: dict[str, float] = {}
    for img in images:
        if img.cost is not None:
            unit = img.cost_unit or "?"
            paid = 0.0 if img.from_archive else img.cost
            out[unit] = out.get(unit, 0.0) + paid
    return {unit: round(v, 6) for unit, v in out.items()}


def cost_text(costs: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in costs.items()) or "0"


def cost_summary(images: list[ArchivedImage]) -> str:
    """`This run spent: …`, and what the images originally cost where that differs."""
    spent, made = spent_cost(images), total_cost(images)
    text = f"This run spent: {cost_text(spent)}"
    if spent != made:
        reused = sum(1 for i in images if i.from_archive)
        text += (
            f"; the images originally cost {cost_text(made)} ({reused} answered from the archive)"
        )
    return text
