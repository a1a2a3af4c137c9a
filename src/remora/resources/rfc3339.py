"""Kubernetes' time stamps: metav1.Time is RFC 3339 at second precision in UTC
(`2026-12-05T18:59:05Z`, apimachinery's RFC3339 layout), what the API serves and kubectl
reads. One place for the lab, the node and the Kubernetes API to write and read them."""

from __future__ import annotations

import datetime

LAYOUT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(ts: float) -> str:
    """Seconds since the epoch as metav1.Time prints them (the fraction dropped)."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(LAYOUT)


def parse_time(text: object) -> float | None:
    """A metav1.Time back to seconds since the epoch; None if TEXT is not one."""
    try:
        return datetime.datetime.strptime(str(text), LAYOUT).replace(
            tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None
