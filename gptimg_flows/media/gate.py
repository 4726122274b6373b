"""A gate in front of an httpx client: no more of its requests inside httpcore's pool than
the pool has connections.

httpcore matches every waiting request against every connection each time a response ends (a
list of the connections built per waiting request), so 1,000 requests waiting for 200
connections cost the event loop about 1,000 x 200 checks per response: 83 % of a flow
process's event loop with 1,000 jobs in flight (bench/RESULTS-capacity.md). Waiting here, on
an asyncio.Semaphore, costs the same whatever the queue. Nothing is sent while waiting, and
the wait is bounded by the client's `pool` timeout, as httpcore's is.

A gate at the call sites rather than a transport of our own: a client given a transport no
longer applies HTTP(S)_PROXY from the environment, which users behind a proxy rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

import httpx

#: Our clients' pools: 200 connections, and few idle ones kept, since httpcore checks every
#: idle one (a syscall each) on every request: a tenth of the event loop at 250 jobs in flight.
MAX_CONNECTIONS = 200
CLIENT_LIMITS = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=16)

_GATES: weakref.WeakKeyDictionary[httpx.AsyncClient, RequestGate] = weakref.WeakKeyDictionary()


class RequestGate:
    """`slots` requests at a time; each holds its slot until its response is closed."""

    def __init__(self, slots: int, wait: float | None) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._wait = wait

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"no connection free within {self._wait} s") from None
        try:
            yield
        finally:
            self._slots.release()


def gate_of(client: httpx.AsyncClient) -> RequestGate:
    """The client's gate: CLIENT_LIMITS' connections, waiting at most its pool timeout."""
    gate = _GATES.get(client)
    if gate is None:
        gate = _GATES[client] = RequestGate(MAX_CONNECTIONS, client.timeout.pool)
    return gate
