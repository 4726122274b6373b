"""Reading what a user would see in the Prefect UI, straight from the API."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client


async def api_post(path: str, body: dict[str, Any] | None = None) -> Any:
    async with get_client() as client:
        response = await client._client.post(path, json=body or {})
        response.raise_for_status()
        return response.json()


async def artifacts(flow_run_id: str | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"sort": "CREATED_DESC", "limit": 200}
    if flow_run_id:
        body["flow_runs"] = {"id": {"any_": [flow_run_id]}}
    result: list[dict[str, Any]] = await api_post("/artifacts/filter", body)
    return result


async def asset_events(keys: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    """Asset events as the UI's lineage reads them, once the client has delivered them."""
    import asyncio

    from prefect.events.worker import EventsWorker

    await asyncio.to_thread(EventsWorker.drain_all)
    body = {
        "filter": {
            "event": {"prefix": ["prefect.asset."]},
            "occurred": {"since": "2000-01-01T00:00:00Z"},
        },
        "limit": 50,
    }
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found: list[dict[str, Any]] = (await api_post("/events/filter", body))["events"]
        seen = {e["resource"]["prefect.resource.id"] for e in found}
        if keys <= seen or loop.time() > deadline:
            return found
        await asyncio.sleep(0.5)
