"""The request gate: never more requests inside httpcore's pool than it has connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from gptimg_flows.errors import TransportError
from gptimg_flows.media.gate import _GATES, MAX_CONNECTIONS, RequestGate, gate_of
from gptimg_flows.providers._http import ApiClient


class _Server:
    """A handler that holds each request a little and counts how many are in at once."""

    def __init__(self, hold: float = 0.01) -> None:
        self.inside = self.peak = self.served = 0
        self.hold = hold

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        await asyncio.sleep(self.hold)
        self.inside -= 1
        self.served += 1
        return httpx.Response(200, json={"ok": True})


def _api(server: _Server, pool: float = 5.0) -> ApiClient:
    timeout = httpx.Timeout(5.0, pool=pool)
    return ApiClient("emu", "http://p", {}, timeout, httpx.MockTransport(server))


async def test_a_providers_requests_go_through_at_most_as_many_as_its_connections() -> None:
    server = _Server()
    api = _api(server)
    slots = MAX_CONNECTIONS
    answers = await asyncio.gather(*(api.request("GET", f"/{i}") for i in range(3 * slots)))
    assert answers == [(200, {"ok": True})] * (3 * slots)
    assert server.served == 3 * slots and server.peak == slots


async def test_waiting_past_the_pool_timeout_is_a_transport_error_with_nothing_sent() -> None:
    server = _Server(hold=1.0)
    api = _api(server, pool=0.2)
    _GATES[api._client] = RequestGate(1, 0.2)  # one connection, 0.2 s of pool wait
    first = asyncio.ensure_future(api.request("GET", "/a"))
    await asyncio.sleep(0.05)
    with pytest.raises(TransportError) as caught:
        await api.request("GET", "/b")
    assert caught.value.request_sent is False and server.served == 0
    assert await first == (200, {"ok": True})


async def test_a_slot_is_held_while_a_stream_is_open_and_freed_when_it_closes() -> None:
    class _Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"x" * 100

    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, stream=_Body())),
        timeout=httpx.Timeout(5, pool=0.2),
    )
    _GATES[client] = RequestGate(1, 0.2)
    gate = gate_of(client)
    async with gate.slot(), client.stream("GET", "http://p/a") as held:
        with pytest.raises(httpx.PoolTimeout):
            async with gate.slot():
                pass
        assert len(await held.aread()) == 100
    async with gate.slot():  # freed by the close, and by a failure inside
        pass
    with pytest.raises(RuntimeError):
        async with gate.slot():
            raise RuntimeError("boom")
    async with gate.slot():
        pass
    await client.aclose()


def test_a_providers_client_still_takes_its_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why a gate and not a transport of our own: httpx applies HTTP(S)_PROXY only to clients
    built without one."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    api = ApiClient("emu", "https://p", {}, httpx.Timeout(5.0), None)
    assert "https://" in [p.pattern for p in api._client._mounts]
