"""An httpx transport that lets no more requests into httpcore's pool than it has connections.

httpcore matches every waiting request against every connection each time a response ends (a
list of the connections built per waiting request), so 1,000 requests waiting for 200
connections cost the event loop about 1,000 x 200 checks per response: 83 % of a flow
process's event loop with 1,000 jobs in flight (bench/RESULTS-capacity.md). Waiting here, on
an asyncio.Semaphore, costs the same whatever the queue. Nothing is sent while waiting, and
the wait is bounded by the request's `pool` timeout, as httpcore's is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

#: Our clients' pools: 200 connections, and few idle ones kept, since httpcore checks every
#: idle one (a syscall each) on every request: a tenth of the event loop at 250 jobs in flight.
CLIENT_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=16)


class GatedTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncHTTPTransport` behind a semaphore of `limits.max_connections` slots, each
    held until its response is closed (a streamed download keeps its connection until then)."""

    def __init__(self, limits: httpx.Limits, **options: Any) -> None:
        if limits.max_connections is None:
            raise ValueError("a gated transport needs limits.max_connections")
        self._inner = httpx.AsyncHTTPTransport(limits=limits, **options)
        self._slots = asyncio.Semaphore(limits.max_connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        wait = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(
                f"no connection free within {wait} s", request=request
            ) from None
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.release()
            raise
        if response.is_closed:  # read whole already (e.g. a mock's answer): nothing held
            self._slots.release()
        else:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _Releasing(response.stream, self._slots.release)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Releasing(httpx.AsyncByteStream):
    """The response body; closing it (which httpx always does) frees the slot, once."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
