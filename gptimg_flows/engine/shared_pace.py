"""The processes on one provider account keep their pace in step through the Prefect server.

Each flow process learns an account's rate limit from the 429s it meets. Two processes on one
key learning it alone end up unequal: one takes most of the account while the other, starved,
learns a slow pace, and crawls on at it once the first has finished (1.16-1.42x the ideal wall
at 60 images/min, two processes of C=16; bench/RESULTS-ratelimit.md). Here a
limiter that is pacing keeps a Prefect variable per account (`gptimg_pace_<account id>`, a
digest of the provider, base URL and key: no secret) in step with itself, about once a second
while its submits wait and at once after a 429 cuts its pace: the account's pace, who is
sending, and until when a long Retry-After holds everyone (AccountLimiter.sync says how they
merge). A process starting on an account first reads it, so it starts at the account's pace
and its share instead of bursting into a limit others have found.

No setting: the Prefect server every run already talks to is the meeting place. A server that
cannot be reached costs the sharing, never a submit: each process then paces alone, as before.
Nothing is read or written for an account that has never been seen pacing, apart from one read
when a process starts sending to it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists

from gptimg_flows.engine.rate_limiter import AccountLimiter, SharedPace

#: How often a pacing process and the account's shared pace meet (seconds) ...
SYNC_SECONDS = 1.0
#: ... how long a process starting on an account waits for its first read at most ...
FIRST_READ_SECONDS = 2.0
#: ... how often an account nobody paces is looked at again by a process that sends to it ...
LOOK_AGAIN_SECONDS = 60.0
#: ... and how long the server is left alone after it could not be reached.
AFTER_FAILURE_SECONDS = 30.0
#: This process, as the other processes see it in the variable.
MEMBER = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
#: limiter (by id) -> the thread keeping it in step, its first read done, and the limiter
_KEEPERS: dict[int, tuple[threading.Thread, Future[None], AccountLimiter]] = {}
#: limiter -> when its account was last looked at (monotonic; in the future after a failure)
_LOOKED: dict[int, float] = {}
#: set as the process exits: each keeper leaves its account's members at once
_STOP = threading.Event()
#: how long an exiting process waits for its keepers to leave (seconds), and how long after
#: leaving a keeper looks again (the variable has no compare-and-set: a write read before
#: the leave puts the member back)
LEAVE_SECONDS = 2.0
LEAVE_CHECK_SECONDS = 0.3


def variable_name(account: str) -> str:
    return f"gptimg_pace_{account}"


async def in_step(limiter: AccountLimiter) -> None:
    """Before a paid submit: make sure someone keeps this account's pace in step with the other
    processes (a thread, one an account), and on the first look wait (briefly) for what they
    know, so the first submits go at the account's pace."""
    first = _keeper_for(limiter)
    if first is None:
        return
    if not first.done():
        # shielded: one submit's timeout must not cancel the read the others wait for
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(first)), FIRST_READ_SECONDS)


def _keeper_for(limiter: AccountLimiter) -> Future[None] | None:
    account = limiter.account
    if not account:
        return None
    now = time.monotonic()
    key = id(limiter)
    with _LOCK:
        keeper = _KEEPERS.get(key)
        if keeper is not None and keeper[0].is_alive():
            return keeper[1]
        looked = _LOOKED.get(key)
        if limiter.rate is None and looked is not None and now - looked < LOOK_AGAIN_SECONDS:
            return None
        if looked is not None and looked > now:  # failed lately: not before its time
            return None
        _LOOKED[key] = now
        first: Future[None] = Future()
        # the run's context (its Prefect API settings) goes with the thread
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(_keep, limiter, first),
            name=f"gptimg-pace-{account[:8]}",
            daemon=True,
        )
        for gone in [k for k, (t, _, _) in _KEEPERS.items() if not t.is_alive()]:
            del _KEEPERS[gone]  # a keeper that left holds no limiter alive
        _KEEPERS[key] = (thread, first, limiter)
    thread.start()
    return first


def _keep(limiter: AccountLimiter, first: Future[None]) -> None:
    """Sync while this process paces the account; leave (one last sync) when it stops."""
    name = variable_name(limiter.account)
    try:
        with get_client(sync_client=True) as client:
            idle = 0
            while True:
                limiter.cut_news.clear()
                _sync(client, name, limiter)
                _done(first)
                if limiter.rate is None:
                    return  # nobody paces this account: nothing to keep
                idle = 0 if limiter.busy else idle + 1
                if idle >= 2 or _STOP.is_set():  # the last sync left the members ...
                    if not limiter.busy:
                        # ... unless another process wrote back what it read before it
                        time.sleep(LEAVE_CHECK_SECONDS)
                        _sync(client, name, limiter)
                    return
                limiter.cut_news.wait(SYNC_SECONDS)
    except Exception as exc:  # the sharing is lost, never a submit: pace alone
        _log.debug("shared pace of %s unavailable: %r", limiter.name, exc)
        with _LOCK:
            _LOOKED[id(limiter)] = time.monotonic() + AFTER_FAILURE_SECONDS
    finally:
        _done(first)


def _done(first: Future[None]) -> None:
    if not first.done():
        first.set_result(None)


@atexit.register
def _leave_all() -> None:
    """A process ending says so, instead of counting for its share until it goes stale."""
    _STOP.set()
    with _LOCK:
        alive = [(thread, limiter) for thread, _, limiter in _KEEPERS.values() if thread.is_alive()]
    for _, limiter in alive:
        limiter.cut_news.set()
    deadline = time.monotonic() + LEAVE_SECONDS
    for thread, _ in alive:
        thread.join(max(0.0, deadline - time.monotonic()))


def _sync(client: SyncPrefectClient, name: str, limiter: AccountLimiter) -> None:
    """Read the account's shared pace, merge this process's news, write it back if changed."""
    stored = client.read_variable_by_name(name)
    before = SharedPace.from_json(stored.value if stored is not None else None)
    after = limiter.sync(before, MEMBER, time.time(), time.monotonic())
    value = after.to_json()
    if stored is not None and value == before.to_json():
        return
    if after.rate is None and not after.members:
        return  # nothing worth storing
    if stored is not None:
        client.update_variable(VariableUpdate(name=name, value=value))
        return
    try:
        client.create_variable(VariableCreate(name=name, value=value))
    except ObjectAlreadyExists:  # another process made it meanwhile
        client.update_variable(VariableUpdate(name=name, value=value))
