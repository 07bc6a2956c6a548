"""Billing status from the dunning facts the company row holds. Pure: `now` is an argument."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class BillingStatus(StrEnum):
    OK = "ok"
    PAST_DUE = "past_due"
    RESTRICTED = "restricted"


@dataclass(frozen=True)
class Dunning:
    past_due_since: datetime | None  # earliest failed payment of an open invoice; None = OK
    grace_ends_at: datetime | None
    restricted: bool = False  # forced, e.g. an invoice marked uncollectible

    def status(self, now: datetime) -> BillingStatus:
        if self.past_due_since is None and not self.restricted:
            return BillingStatus.OK
        if self.restricted or (self.grace_ends_at is not None and now >= self.grace_ends_at):
            return BillingStatus.RESTRICTED
        return BillingStatus.PAST_DUE


def grace_end(earliest_failure: datetime, grace_days: int) -> datetime:
    return earliest_failure + timedelta(days=grace_days)


def dunning_from_invoices(earliest_failure: datetime | None, grace_days: int) -> Dunning:
    """the design's rule: past due while an invoice is unpaid after a failed payment (open, or
    marked uncollectible), from the earliest such failure (a second failure never extends the
    grace); restricted once the grace has passed."""
    if earliest_failure is None:
        return Dunning(None, None, False)
    return Dunning(earliest_failure, grace_end(earliest_failure, grace_days))
