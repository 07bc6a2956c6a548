"""Invoice previews: `invoices.create_preview` (customer + subscription), mapped to plain values.

The old "upcoming invoice" endpoint is gone since API version 2025-03-31. Amounts come back in
Decimal major units of the invoice's currency ("12.34" for 1234 cents).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import stripe

from meterline.config import Settings
from meterline.stripe_gateway.client import (
    StripeRejection,
    close_client,
    make_client,
    rejection_of,
)

# Stripe's answer when a subscription will not invoice again (cancelled, ended).
NO_UPCOMING_INVOICE = "invoice_upcoming_none"
# A preview may carry more lines than the first page (pending invoice items): page through them.
LINES_PAGE_SIZE = 100
MAX_LINES = 1_000

# Amounts are in the currency's smallest unit: 100 of them a unit, except these.
# https://docs.stripe.com/currencies#zero-decimal and #three-decimal
_ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
_THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def to_major_units(minor: int, currency: str) -> Decimal:
    """1234 usd cents -> Decimal("12.34"); 1234 jpy -> Decimal("1234")."""
    code = currency.lower()
    exponent = 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2
    return Decimal(minor).scaleb(-exponent)


@dataclass(frozen=True)
class PreviewLine:
    description: str | None
    quantity: int | None
    amount: Decimal  # major units, before discounts and taxes


@dataclass(frozen=True)
class InvoicePreview:
    currency: str
    amount_due: Decimal  # major units
    period_start: datetime
    period_end: datetime
    lines: tuple[PreviewLine, ...]


class PreviewFailed(Exception):
    """Stripe did not give a preview: unreachable, timed out, 5xx, 429, refused it
    (`rejection`), or answered something unreadable. `transient` says whether asking again
    later may succeed."""

    def __init__(
        self, message: str, *, transient: bool, rejection: StripeRejection | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.rejection = rejection


def _timestamp(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _optional(obj: stripe.StripeObject, name: str) -> Any:
    """A field Stripe may leave out. (Stripe objects are no longer dicts: no `.get`.)"""
    return getattr(obj, name, None)


def _line(line: stripe.InvoiceLineItem, currency: str) -> PreviewLine:
    quantity = _optional(line, "quantity")
    return PreviewLine(
        description=_optional(line, "description"),
        quantity=int(quantity) if quantity is not None else None,
        amount=to_major_units(int(line.amount), currency),
    )


def _preview(invoice: stripe.Invoice, lines: list[stripe.InvoiceLineItem]) -> InvoicePreview:
    currency = str(invoice.currency).lower()
    return InvoicePreview(
        currency=currency,
        amount_due=to_major_units(int(invoice.amount_due), currency),
        period_start=_timestamp(int(invoice.period_start)),
        period_end=_timestamp(int(invoice.period_end)),
        lines=tuple(_line(line, currency) for line in lines),
    )


async def _all_lines(
    client: stripe.StripeClient, invoice: stripe.Invoice
) -> list[stripe.InvoiceLineItem]:
    page = invoice.lines
    lines = list(page.data)
    invoice_id = _optional(invoice, "id")
    while page.has_more and lines and invoice_id and len(lines) < MAX_LINES:
        page = await client.v1.invoices.line_items.list_async(
            invoice_id, {"limit": LINES_PAGE_SIZE, "starting_after": lines[-1].id}
        )
        if not page.data:
            break
        lines.extend(page.data)
    return lines


async def preview_upcoming_invoice(
    settings: Settings, *, customer: str, subscription: str, time_limit: float
) -> InvoicePreview | None:
    """The invoice Stripe would issue next for this subscription; None if there is none.
    Raises StripeNotConfigured (no secret key) and PreviewFailed. `time_limit` (seconds) bounds the
    whole call, line pages included."""
    client = make_client(settings, timeout=time_limit)
    try:
        async with asyncio.timeout(time_limit):
            invoice = await client.v1.invoices.create_preview_async(
                {"customer": customer, "subscription": subscription}
            )
            lines = await _all_lines(client, invoice)
    except TimeoutError as exc:
        raise PreviewFailed(
            f"no answer from Stripe within {time_limit:g} s", transient=True
        ) from exc
    except stripe.InvalidRequestError as exc:
        if exc.code == NO_UPCOMING_INVOICE:
            return None
        raise PreviewFailed(_describe(exc), transient=False, rejection=rejection_of(exc)) from exc
    except stripe.StripeError as exc:
        rejection = rejection_of(exc)
        raise PreviewFailed(
            _describe(exc), transient=rejection is None, rejection=rejection
        ) from exc
    finally:
        await close_client(client)
    try:
        return _preview(invoice, lines)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        message = f"unexpected invoice preview from Stripe: {exc!r}"
        raise PreviewFailed(message, transient=False) from exc


def _describe(exc: stripe.StripeError) -> str:
    status = f" ({exc.http_status})" if exc.http_status else ""
    return f"{type(exc).__name__}{status}: {exc.user_message or exc}"
