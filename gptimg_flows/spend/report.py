"""What was paid, read back from an archive's sidecars: one sidecar per paid image, with its
cost, unit, provider and time. No Prefect here."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel

from gptimg_flows.archive.store import Archive

GroupBy = Literal["provider", "day"]


class SpendRow(BaseModel):
    """Spend of one group (a provider or route member, or a day) in one cost unit."""

    group: str
    unit: str
    images: int
    amount: float
    unpriced: int = 0


def spend_report(
    archive: Archive, since: date | None = None, by: GroupBy = "provider"
) -> list[SpendRow]:
    """Totals per group and unit, for images archived on or after `since` (UTC days)."""
    rows: dict[tuple[str, str], SpendRow] = {}
    for record in archive.sidecars():
        made = _created(record)
        if since is not None and (made is None or made.date() < since):
            continue
        day = made.date().isoformat() if made else "unknown"
        group = _seller(record) if by == "provider" else day
        unit = str(record.get("cost_unit") or "?")
        row = rows.setdefault((group, unit), SpendRow(group=group, unit=unit, images=0, amount=0))
        row.images += 1
        cost = record.get("cost")
        if isinstance(cost, int | float):
            row.amount = round(row.amount + float(cost), 6)
        else:
            row.unpriced += 1
    return [rows[k] for k in sorted(rows)]


def _seller(record: dict[str, Any]) -> str:
    """The provider, or for a routed image the route member that made it (and its provider):
    two accounts of one provider in a route are two rows."""
    provider = str(record.get("provider", "?"))
    member = record.get("member")
    if isinstance(member, str) and member and member != provider:
        return f"{member} ({provider})"
    return provider


def _created(record: dict[str, Any]) -> datetime | None:
    try:
        made = datetime.fromisoformat(str(record.get("created_at")))
    except ValueError:
        return None
    return made if made.tzinfo else made.replace(tzinfo=UTC)
