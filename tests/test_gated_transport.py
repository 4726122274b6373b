"""The gated transport: never more requests inside httpcore's pool than it has connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from gptimg_flows.gated_transport import GatedTransport


class _Server:
    """A handler that holds each request a little and counts how many are in at once."""

    def __init__(self) -> None:
        self.inside = self.peak = self.served = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        await asyncio.sleep(0.01)
        self.inside -= 1
        self.served += 1
        return httpx.Response(200, stream=_Body())  # streamed, as a real connection's is


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 100


def _client(server: _Server, slots: int, pool: float = 5.0) -> httpx.AsyncClient:
    transport = GatedTransport(httpx.Limits(max_connections=slots))
    transport._inner = httpx.MockTransport(server)  # type: ignore[assignment]
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=pool))


async def test_many_requests_go_through_at_most_slots_at_a_time() -> None:
    server = _Server()
    async with _client(server, slots=4) as client:
        answers = await asyncio.gather(*(client.get(f"http://p/{i}") for i in range(200)))
    assert [a.status_code for a in answers] == [200] * 200
    assert server.served == 200 and server.peak == 4


async def test_a_streamed_response_holds_its_slot_until_it_is_closed() -> None:
    server = _Server()
    async with _client(server, slots=1, pool=0.2) as client:
        async with client.stream("GET", "http://p/a") as held:
            # the one slot is held by the open stream: the next request waits, then times out
            with pytest.raises(httpx.PoolTimeout):
                await client.get("http://p/b")
            assert len(await held.aread()) == 1000
        assert (await client.get("http://p/c")).status_code == 200  # freed by the close


async def test_a_failed_request_frees_its_slot() -> None:
    calls = 0

    async def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    transport = GatedTransport(httpx.Limits(max_connections=1))
    transport._inner = httpx.MockTransport(flaky)  # type: ignore[assignment]
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(1, pool=0.5)) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("http://p/")
        assert (await c.get("http://p/")).status_code == 200
