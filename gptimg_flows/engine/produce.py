"""One request end to end, as the flows run it: validate, load and check inputs, answer from
the archive, reserve the budget, then make_images (submit, wait, download, archive) as one
task run. Plus the checks of a run's parameters every flow shares (timeout, max_cost).
"""

from __future__ import annotations

from typing import Any

from prefect.logging import get_run_logger

from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.route import Route
from gptimg_flows.blocks.seller import Seller
from gptimg_flows.engine.job_record import NO_PAYING, Recorded, State, recorded
from gptimg_flows.engine.records import request_key, route_key
from gptimg_flows.engine.refresh import (
    point_to_newest,
    refresh_stamp,
    remade_key,
    with_newest,
)
from gptimg_flows.engine.routing import Prepared, RoutePlanner, produce_routed
from gptimg_flows.engine.spending import hold_spend
from gptimg_flows.engine.steps import (
    load_edit_inputs,
    make_images_for,
    past_live_claim,
    upload_inputs,
)
from gptimg_flows.errors import BudgetExceeded, InvalidRequest, RoutedElsewhere
from gptimg_flows.models import ArchivedImage, EditRequest, ImageRequest
from gptimg_flows.spend.estimate import Pricer
from gptimg_flows.spend.prices import Budget


def planner_of(spec: Seller | Route) -> Pricer:
    """What checks and prices a request for the flows: the provider, or the route."""
    return RoutePlanner(spec) if isinstance(spec, Route) else spec.adapter


def request_key_of(
    spec: Seller | Route, request: ImageRequest, digests: list[str], slot: str
) -> str:
    """The key a request is claimed and recorded under: the route's, or the provider's."""
    if isinstance(spec, Route):
        return route_key(request, digests, slot)
    return request_key(spec.adapter, request, digests, slot)


def key_of(spec: Seller | Route, request: ImageRequest) -> list[str]:
    """The keys a generation's images may be recorded under (slot "0", no inputs)."""
    if isinstance(spec, Route):
        return RoutePlanner(spec).keys(request, [], "0")
    return [request_key_of(spec, request, [], "0")]


async def produce(
    spec: Seller | Route,
    request: ImageRequest,
    archive: Archive,
    *,
    slot: str = "0",
    refresh: bool = False,
    timeout_seconds: float = 900.0,
    extra: dict[str, Any] | None = None,
    row: int | None = None,
    budget: Budget | None = None,
    remake_uncertain: bool = False,
) -> list[ArchivedImage]:
    """Validate → (inputs) → archived already? → budget → submit → wait → download → archive.

    A request that must be paid for reserves its estimate in the run's `budget` and takes it
    from the block's shared spend limit first (engine/spending); either refusal is
    BudgetExceeded, before any upload or submit. A job already on record (a resumed run) takes
    nothing again; a submit that created nothing gives its reservation back.
    """
    logger = get_run_logger()
    planner_of(spec).validate(request)  # before anything is read, uploaded or paid
    prepared = Prepared(loaded=[], mask=None, digests=[], parents=[])
    if isinstance(request, EditRequest):
        loaded, mask = await load_edit_inputs(request, archive)
        prepared = Prepared(
            loaded=loaded,
            mask=mask,
            digests=[img.sha256 for img in loaded] + (["mask:" + mask.sha256] if mask else []),
            parents=[archive.uri(Archive.image_rel(img.sha256, img.mime)) for img in loaded],
        )
    base_slot = slot
    if refresh:
        slot = f"{slot}{await refresh_stamp(archive)}"
    if isinstance(spec, Route):
        return await produce_routed(
            spec,
            request,
            archive,
            prepared,
            slot=slot,
            refresh=refresh,
            timeout_seconds=timeout_seconds,
            extra=extra,
            row=row,
            budget=budget,
            base_slot=base_slot,
            remake_uncertain=remake_uncertain,
        )
    adapter = spec.adapter
    loaded, mask, parents = prepared.loaded, prepared.mask, prepared.parents
    key = request_key(adapter, request, prepared.digests, slot)
    base = request_key(adapter, request, prepared.digests, base_slot)
    # Its newest images' key (a refresh's), its own, then the route key (sent through a route
    # before): one record, read under every key it may have.
    keys = [key, route_key(request, prepared.digests, slot)]
    found = await recorded(archive, keys if refresh else await with_newest(archive, keys))
    while remake_uncertain and found.state is State.UNCERTAIN:
        logger.info("this request's submit is uncertain: making it again (remake_uncertain)")
        key = remade_key(found)
        found = await recorded(archive, [key])
    if found.state is State.ARCHIVED and found.images:
        logger.info(
            "%d image(s) for this request are already archived: no provider call",
            len(found.images),
        )
        await point_to_newest(archive, base, found.key)
        return [img.model_copy(update={"from_archive": True}) for img in found.images]
    if found.key != key and found.state in NO_PAYING:
        key = _resumable_route_key(found, adapter.name)
    found = await past_live_claim(archive, found)
    price = adapter.price(request)
    hold = await hold_spend(spec.spec, price, budget, take=found.may_pay)
    try:
        inputs = (
            await upload_inputs(spec, request, loaded, mask, archive)
            if isinstance(request, EditRequest)
            else None
        )
        archived: list[ArchivedImage] = await make_images_for(spec)(
            spec, request, inputs, key, archive, parents, extra, timeout_seconds, row
        )
    except BaseException as exc:
        await hold.follow(exc, archive, key)  # given back if nothing was created, else kept
        raise
    paid = [i for i in archived if not i.from_archive]  # not another run's images
    costs = [i.cost for i in paid if i.cost is not None]
    await hold.settle(sum(costs) if costs or not paid else None)
    await point_to_newest(archive, base, key)
    return archived


def _resumable_route_key(found: Recorded, provider: str) -> str:
    """A request sent through a route earlier, met by a run of one provider: resumed under
    the route's key when that provider made it; otherwise it stays where it was sent."""
    if found.made_by == provider:
        return found.key
    raise RoutedElsewhere(
        f"this request was sent through a route to {found.member or found.made_by!r}: it stays "
        "there (run it through that route or provider to collect it; nothing is paid again)",
        member=str(found.member or found.made_by),
    )


def check_timeout(timeout_seconds: float) -> None:
    if not timeout_seconds > 0:
        raise InvalidRequest(
            f"timeout_seconds={timeout_seconds:g}; it must be a positive number of seconds",
            field="timeout_seconds",
        )


def run_budget(
    adapter: Pricer, max_cost: float | None, requests: list[ImageRequest]
) -> Budget | None:
    """The run's `max_cost` budget; a price nobody can estimate is refused up front, with how
    to set one."""
    if max_cost is None:
        return None
    if not max_cost >= 0:
        raise InvalidRequest(f"max_cost={max_cost:g}; it must be 0 or more", field="max_cost")
    for request in requests:
        price = adapter.price(request)
        if price.amount is None:
            raise BudgetExceeded(f"max_cost={max_cost:g} cannot be kept: {price.note}")
    return Budget(max_cost, adapter.cost_unit)
