"""A route's decisions one at a time, with no server: which errors may move a request, member
health (cooldown, probe), candidates and their order, prices in USD, and what `provider=` names."""

from __future__ import annotations

import pytest

from gptimg_flows.blocks.credentials import (
    GptImage2AICredentials,
    RunwareCredentials,
    ScenarioCredentials,
)
from gptimg_flows.blocks.resolve import resolve_provider
from gptimg_flows.blocks.route import Route, RoutePolicy
from gptimg_flows.blocks.seller import seller_of
from gptimg_flows.engine import route_health as health
from gptimg_flows.engine.routing import RoutePlanner, candidates, in_unit
from gptimg_flows.errors import (
    AuthError,
    BudgetExceeded,
    ContentRejected,
    InsufficientCredits,
    InvalidRequest,
    JobFailed,
    MalformedResponse,
    ProviderError,
    RateLimited,
    ServerError,
    SubmitUncertain,
    TransportError,
    can_move_on,
)
from gptimg_flows.models import EditRequest, ImageRequest
from gptimg_flows.spend.prices import Price


def _unpaid(exc: ProviderError, unpaid: bool = True) -> ProviderError:
    exc.unpaid = unpaid
    return exc


@pytest.mark.parametrize(
    ("exc", "moves"),
    [
        (_unpaid(ServerError("503")), True),
        (_unpaid(TransportError("refused", request_sent=False)), True),
        (_unpaid(AuthError("401")), True),
        (_unpaid(InsufficientCredits("402")), True),
        (_unpaid(BudgetExceeded("spend limit")), True),
        (_unpaid(RateLimited("waited", gave_up=True)), True),
        (_unpaid(RateLimited("one 429", gave_up=False)), False),
        (_unpaid(ServerError("500"), unpaid=False), False),  # a claim ended, not withdrawn
        (_unpaid(TransportError("cut off", request_sent=True), unpaid=False), False),
        (_unpaid(ContentRejected("moderation")), False),
        (_unpaid(InvalidRequest("400")), False),
        (MalformedResponse("not JSON"), False),
        (SubmitUncertain("answer lost"), False),
        (JobFailed("failed after creation"), False),
        (BudgetExceeded("the run's max_cost"), False),
        (ValueError("not ours"), False),
    ],
)
def test_only_what_created_nothing_and_says_the_seller_is_out_moves_on(
    exc: BaseException, moves: bool
) -> None:
    assert can_move_on(exc) is moves


def test_a_member_cools_after_k_failures_in_a_row_then_one_probe_goes_first() -> None:
    health.forget_health()
    policy = RoutePolicy(failures_to_cool=3, cooldown_seconds=10)
    assert health.available("acct", 0.0)
    assert not health.failed("acct", 1.0, policy)
    assert not health.failed("acct", 2.0, policy)
    assert health.failed("acct", 3.0, policy), "the third in a row cools it"
    assert not health.available("acct", 12.9) and not health.take("acct", 12.9)
    assert health.take("acct", 13.0), "the cooldown is over: this request is the probe"
    assert not health.available("acct", 13.1), "the rest wait for the probe's answer"
    assert health.failed("acct", 14.0, policy), "a failed probe cools it again at once"
    assert not health.available("acct", 20.0)
    assert health.take("acct", 24.0)
    health.succeeded("acct", 25.0, policy)
    assert health.available("acct", 25.0) and health.take("acct", 25.0)


def test_a_member_failing_over_half_its_submits_in_the_window_cools() -> None:
    health.forget_health()
    policy = RoutePolicy(failures_to_cool=5, failure_ratio=0.5, window_seconds=60)
    for t in range(3):
        health.succeeded("acct", float(t), policy)
        assert not health.failed("acct", t + 0.5, policy)
    assert health.failed("acct", 4.0, policy), "4 failures of 7 in the window"
    health.forget_health()
    health.succeeded("acct", 0.0, policy)
    assert not health.failed("acct", 100.0, policy), "old successes left the window"


def _route(strategy: str = "order", **blocks: object) -> Route:
    members = tuple(seller_of(spec, name) for name, spec in blocks.items())  # type: ignore[arg-type]
    return Route("test", members, RoutePolicy(strategy=strategy))  # type: ignore[arg-type]


def test_cheapest_orders_by_usd_with_unconvertible_members_last() -> None:
    runware = RunwareCredentials(api_key="k", price_per_image=0.05)
    credits = GptImage2AICredentials(api_key="k", usd_per_unit=0.004)  # 10 credits: $0.04
    cu_unknown = ScenarioCredentials(api_key="k", api_secret="s", price_per_image=4.0)
    cu = ScenarioCredentials(api_key="k2", api_secret="s", price_per_image=4.0, usd_per_unit=0.005)
    route = _route("cheapest", a=runware, b=credits, c=cu_unknown, d=cu)
    request = ImageRequest(prompt="price me", size="1024x1024")
    assert [m.name for m in candidates(route, request)] == ["d", "b", "a", "c"]
    assert [m.name for m in candidates(_route(a=runware, d=cu), request)] == ["a", "d"]


def test_a_request_no_member_can_make_names_each_members_reason() -> None:
    route = _route(a=RunwareCredentials(api_key="k"), b=GptImage2AICredentials(api_key="k"))
    edit = EditRequest(prompt="sky", images=["x.png"], mask="m.png")
    with pytest.raises(InvalidRequest) as raised:
        candidates(route, edit)
    assert "a: " in str(raised.value) and "b: " in str(raised.value)
    assert "mask" in str(raised.value)


def test_a_route_prices_in_its_members_shared_unit_or_in_usd() -> None:
    same = RoutePlanner(
        _route(a=RunwareCredentials(api_key="k"), b=RunwareCredentials(api_key="j"))
    )
    assert same.cost_unit == "usd"
    mixed = RoutePlanner(
        _route(
            a=GptImage2AICredentials(api_key="k", usd_per_unit=0.01),
            b=RunwareCredentials(api_key="j"),
        )
    )
    assert mixed.cost_unit == "usd"
    price = mixed.price(ImageRequest(prompt="x", n=2))
    assert price.unit == "usd" and price.amount == pytest.approx(0.2)  # 20 credits at $0.01
    unknown = in_unit(Price(amount=5, unit="cu", basis="documented price"), "usd", None, "s")
    assert unknown.amount is None and "usd_per_unit" in unknown.note


async def test_provider_names_a_route_as_a_list_and_a_list_of_one_is_that_provider() -> None:
    single = await resolve_provider(["offline"])
    assert not isinstance(single, Route) and single.spec == "offline" and single.name == "offline"
    route = await resolve_provider(["offline", "offline-lenient"])
    assert isinstance(route, Route) and [m.name for m in route.members] == [
        "offline",
        "offline-lenient",
    ]
    twins = await resolve_provider(
        [RunwareCredentials(api_key="a"), RunwareCredentials(api_key="b")]
    )
    assert isinstance(twins, Route) and [m.name for m in twins.members] == ["runware", "runware#2"]
    with pytest.raises(InvalidRequest, match="twice"):
        await resolve_provider(["offline", "offline"])
    with pytest.raises(InvalidRequest, match="empty"):
        await resolve_provider([])


def test_chunk_runs_of_a_distributed_batch_load_a_route_by_its_saved_names() -> None:
    from gptimg_flows.distributed.flow import _provider_ref

    saved = Route(
        "content-route", (seller_of("offline", "offline"),), RoutePolicy(), "content-route"
    )
    assert _provider_ref(saved) == "gptimg-provider-route/content-route"
    listed = Route(
        "a → b", (seller_of("offline", "offline"), seller_of("offline-lenient", "x")), RoutePolicy()
    )
    assert _provider_ref(listed) == ["offline", "offline-lenient"]
    unsaved = Route("r", (seller_of(RunwareCredentials(api_key="k"), "runware"),), RoutePolicy())
    with pytest.raises(InvalidRequest, match="saved block"):
        _provider_ref(unsaved)
