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
