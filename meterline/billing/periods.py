"""Billing periods are UTC calendar months: [first day 00:00:00 UTC, next first day).

The month of an event is computed here, from its occurredAt floored to whole seconds (Stripe
timestamps are seconds), never from a database session's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

# ASCII digits only (\d would take any Unicode digit) and fullmatch (a `$` accepts a trailing
# newline).
_MONTH_RE = re.compile(r"([0-9]{4})-([0-9]{2})")


def as_utc(moment: datetime) -> datetime:
    """An aware datetime in UTC. Naive datetimes are refused: their zone is a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetime must carry a time zone")
    return moment.astimezone(UTC)


def floor_to_second(moment: datetime) -> datetime:
    return as_utc(moment).replace(microsecond=0)


def month_of(moment: datetime) -> date:
    """First day of the UTC month that `moment` (floored to seconds) falls in."""
    utc = floor_to_second(moment)
    return date(utc.year, utc.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + (month.month - 1) + count
    return date(index // 12, index % 12 + 1, 1)


def month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def month_end(month: date) -> datetime:
    """Exclusive end: the next month's start."""
    return month_start(add_months(month, 1))


def parse_month(text: str) -> date:
    """'YYYY-MM' -> first day of that month. ValueError on anything else."""
    match = _MONTH_RE.fullmatch(text)
    if not match:
        raise ValueError(f"month must be YYYY-MM, got {text!r}")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12 or year < 1970:
        raise ValueError(f"month must be YYYY-MM, got {text!r}")
    return date(year, month, 1)


def format_month(month: date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def months_back(newest: date, count: int, oldest: date | None = None) -> list[date]:
    """Up to `count` months, newest first, stopping at `oldest` when given."""
    months = []
    current = date(newest.year, newest.month, 1)
    if oldest is not None:
        oldest = date(oldest.year, oldest.month, 1)  # a mid-month date still includes its month
    for _ in range(count):
        if oldest is not None and current < oldest:
            break
        months.append(current)
        current = add_months(current, -1)
    return months


@dataclass(frozen=True)
class OccurrenceWindow:
    """The occurredAt values Stripe will still bill: [earliest, now]."""

    earliest: datetime
    now: datetime


def billable_window(
    now: datetime, late_grace_hours: int, late_margin_minutes: int = 0
) -> OccurrenceWindow:
    """From the start of this month, or of last month during the first grace hours of a month,
    less a margin.

    Stripe bills meter usage only if it arrives before the period's invoice is finalised (an
    hour after the period by default), so an older event would be accepted and never billed.
    The margin leaves the sync the end of the grace to deliver what was accepted last.
    """
    if late_grace_hours < 0 or late_margin_minutes < 0:
        raise ValueError("late_grace_hours and late_margin_minutes must be >= 0")
    now_utc = floor_to_second(now)
    this_month = month_of(now_utc)
    start = month_start(this_month)
    accepts_until = start + timedelta(hours=late_grace_hours, minutes=-late_margin_minutes)
    if now_utc < accepts_until:
        start = month_start(add_months(this_month, -1))
    return OccurrenceWindow(earliest=start, now=now_utc)
