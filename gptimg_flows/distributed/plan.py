"""Chunks of a distributed batch: which rows go together, what each chunk run is given
(its rows, options and budget share), and what makes two runs the same batch.

No watching and no reading of results here: those are watch.py and gather.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect.client.schemas.objects import FlowRun, StateType

from gptimg_flows.blocks.route import Route
from gptimg_flows.blocks.seller import Seller
from gptimg_flows.engine.produce import request_key_of
from gptimg_flows.models import ArchivedImage, ImageRequest, canonical_json
from gptimg_flows.rows import Row, occurrence_slots
from gptimg_flows.spend.estimate import Pricer
from gptimg_flows.spend.prices import must_fit

DIGEST_VERSION = 1
#: A chunk run in one of these states has ended.
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}


@dataclass
class Chunk:
    """One chunk: its rows (global indices, input order), its run, and what happened to it."""

    index: int
    rows: list[int]
    parameters: dict[str, Any]
    todo: int  # rows with no archived images when this run started
    attempt: int = 0
    restarts: int = 0
    run: FlowRun | None = None
    crashed_runs: list[str] = field(default_factory=list)
    #: runs cancelled because they never started (left Pending, or no worker to take them)
    unstarted_runs: list[str] = field(default_factory=list)
    gave_up: bool = False  # crashed (or never started) more often than chunk_retries allows
    last_beat: datetime | None = None

    @property
    def state(self) -> StateType | None:
        return self.run.state.type if self.run and self.run.state else None

    @property
    def settled(self) -> bool:
        if self.todo == 0:
            return True
        return self.state in FINAL and (self.state is not StateType.CRASHED or self.gave_up)


def keys_and_groups(
    spec: Seller | Route, requests: dict[int, ImageRequest]
) -> tuple[dict[int, str], dict[int, str]]:
    """Each row's request key, with the slot batch_generate gives it (its occurrence number
    among identical requests), and each row's fingerprint (identical requests group)."""
    rows = sorted(requests)  # slots count in row order, as batch_generate counts them
    slots = occurrence_slots([requests[i] for i in rows])
    keys = {
        i: request_key_of(spec, requests[i], [], slot) for i, slot in zip(rows, slots, strict=True)
    }
    groups = {i: canonical_json(requests[i].fingerprint()) for i in rows}
    return keys, groups


def plan_chunks(order: list[int], groups: dict[int, str], chunk_size: int) -> list[list[int]]:
    """Rows in input order, `chunk_size` a chunk, except that a row identical to an earlier
    one joins that row's chunk: a chunk run numbers identical requests itself, so all of them
    must be in one chunk for each to keep its slot (and its key)."""
    chunks: list[list[int]] = []
    home: dict[str, int] = {}
    for i in order:
        if groups[i] in home:
            chunks[home[groups[i]]].append(i)
            continue
        if not chunks or len(chunks[-1]) >= chunk_size:
            chunks.append([])
        chunks[-1].append(i)
        home[groups[i]] = len(chunks) - 1
    return chunks


def make_chunks(
    adapter: Pricer,
    rows: list[Row],
    requests: dict[int, ImageRequest],
    groups: dict[int, str],
    done: dict[int, list[ArchivedImage]],
    options: dict[str, Any],
    chunk_size: int,
    budgeted: bool,
    numbered: bool = True,
) -> list[Chunk]:
    """Each chunk with the parameters of its runs. With a budget, each gets its own rows'
    estimate (rows archived already cost nothing): together never more than max_cost.
    `numbered`: the runs are told each prompt's row in the input (`row_numbers`), which
    their sidecars record."""
    chunks = []
    for index, members in enumerate(plan_chunks(list(requests), groups, chunk_size)):
        todo = [i for i in members if i not in done]
        cap = None
        if budgeted:
            cap = round(sum(adapter.price(requests[i]).amount or 0.0 for i in todo), 9)
        parameters = {**options, "prompts": [rows[i] for i in members], "max_cost": cap}
        if numbered:
            parameters["row_numbers"] = list(members)
        chunks.append(Chunk(index, members, parameters, todo=len(todo)))
    return chunks


def batch_digest(
    rows: list[Row],
    options: dict[str, Any],
    deployment: str,
    chunk_size: int,
    max_cost: float | None,
) -> str:
    """What makes two runs the same batch: the same chunk runs would be started for both."""
    payload = {
        "v": DIGEST_VERSION,
        "rows": rows,
        "options": options,
        "deployment": deployment,
        "chunk_size": chunk_size,
        "max_cost": max_cost,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def check_budget(
    adapter: Pricer,
    requests: dict[int, ImageRequest],
    done: dict[int, list[ArchivedImage]],
    max_cost: float,
) -> None:
    """The rows still to pay for must fit in `max_cost` as a whole: chunk runs cannot share
    one running budget, so each gets a fixed share (its rows' estimate)."""
    todo = [r for i, r in requests.items() if i not in done]
    must_fit(
        max_cost,
        adapter.cost_unit,
        sum(adapter.price(r).amount or 0.0 for r in todo),
        f"the {len(todo)} row(s) not yet archived are",
        "; a distributed batch is refused as a whole (chunk runs cannot share one running "
        "budget). Raise max_cost, or send fewer rows",
    )
