"""Where a company stands against one allowance, and what the month costs. Decimal throughout."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)

from meterline.billing.catalog import Allowance, EventType

CENT = Decimal("0.01")

# Money arithmetic must not depend on the ambient decimal context (28 significant digits by
# default, and any caller may change it). _EXACT never rounds: a result that would need rounding
# raises Inexact instead of silently losing units. _ROUNDING is for deliberate rounding only.
_TRAPS = [InvalidOperation, DivisionByZero, Overflow]
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[*_TRAPS, Inexact])
_ROUNDING = Context(
    prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_UP, traps=_TRAPS
)


@dataclass(frozen=True)
class MeterStatement:
    event_type: EventType
    used: int
    included: int | None  # None = unlimited
    remaining: int | None  # None = unlimited; never negative
    percent_used: float | None  # None when included is None or 0
    exceeded: bool  # used > included
    overage_quantity: int
    unit_price: Decimal
    overage_cost: Decimal


def _percent(used: int, included: int) -> float:
    """100 x used / included, rounded half up to 2 decimals in exact integer arithmetic.

    (float's round() works on the binary value: 0.005 -> 0.01 but 0.015 -> 0.01.)
    """
    hundredths = (used * 10_000 * 2 + included) // (2 * included)
    return hundredths / 100


def price_meter(event_type: EventType, used: int, allowance: Allowance) -> MeterStatement:
    """cost = max(0, used - included) x unit price, rounded to the cent as Stripe rounds an
    invoice line (exact for whole-cent prices; sub-cent prices round per line, not per unit).
    Unlimited allowances never overage."""
    if used < 0:
        raise ValueError("used must be >= 0")
    included = allowance.included
    if included is None:
        overage = 0
        remaining = None
        percent = None
    else:
        overage = max(0, used - included)
        remaining = max(0, included - used)
        percent = None if included == 0 else _percent(used, included)
    return MeterStatement(
        event_type=event_type,
        used=used,
        included=included,
        remaining=remaining,
        percent_used=percent,
        exceeded=overage > 0,
        overage_quantity=overage,
        unit_price=allowance.unit_price,
        overage_cost=to_cents(_EXACT.multiply(Decimal(overage), allowance.unit_price)),
    )


def total_overage_cost(statements: Iterable[MeterStatement]) -> Decimal:
    """The month's metered subtotal: the sum of the lines, each already in cents (what Stripe's
    invoice adds up), so no rounding happens here."""
    total = Decimal(0)
    for statement in statements:
        total = _EXACT.add(total, statement.overage_cost)
    return total


def to_cents(amount: Decimal) -> Decimal:
    """Rounded to the cent the way Stripe rounds a line amount (half up)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP, context=_ROUNDING)
