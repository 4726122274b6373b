"""Archived images as Prefect assets: keys, names, and the materialization events a
materializing task would emit, so the UI draws lineage from input to generated to edited."""

from __future__ import annotations

from collections.abc import Sequence

from prefect.assets import Asset, AssetProperties
from prefect.context import AssetContext, TaskRunContext
from prefect.states import Completed

from gptimg_flows.models import ArchivedImage


def emit_materializations(archived: list[ArchivedImage], parents: Sequence[str]) -> None:
    """The events `MaterializingTask` emits on success, from inside the current task run.

    Prefect's own `AssetContext` builds them, so they are the same events (resource, related
    upstream assets, the run's flow and task run) the UI reads for asset lineage.
    """
    run = TaskRunContext.get()
    context = AssetContext(
        downstream_assets={image_asset(i.uri, i.sha256, i.width, i.height) for i in archived},
        direct_asset_dependencies={Asset(key=asset_key(p)) for p in parents},
        task_run_id=run.task_run.id if run else None,
    )
    context.emit_events(Completed())
    context.update_tracked_assets()


def image_asset(uri: str, sha256: str, width: int, height: int) -> Asset:
    """An archived image as a Prefect asset: keyed by its URI, named by digest and size."""
    return Asset(
        key=asset_key(uri), properties=AssetProperties(name=f"{sha256[:12]} ({width}x{height})")
    )


def asset_key(uri: str) -> str:
    """Prefect asset keys are URIs: archive paths on a local disk become `file://` URIs."""
    return uri if "://" in uri else "file://" + uri
