"""Timestamps as Cilium's API writes them (RFC 3339, UTC)."""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(ts: float | None) -> str:
    """``2026-11-26T19:28:39.123Z``; "" for never (0 or None)."""
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
