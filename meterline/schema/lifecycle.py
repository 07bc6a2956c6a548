"""GraphQL types of the subscription lifecycle. The service's outcomes are the types (their
field names are the contract, as the domain enums are the enums): one definition, no mapping."""

from __future__ import annotations

from typing import Annotated

import strawberry

from meterline.services.lifecycle import (
    CancellationScheduled,
    CheckoutStarted,
    CheckoutUnavailable,
    NoSubscription,
    NothingToResume,
    PortalSession,
    StripeNotReady,
    SubscriptionResumed,
    TierChangeCanceled,
    TierChangeScheduled,
)

strawberry.type(CheckoutStarted, description="Send the user to `url` (Stripe Checkout).")
strawberry.type(
    CheckoutUnavailable,
    description="No checkout can start now (a month's last minutes, or the company's checkout "
    "is being paid): try again at `retryAt`.",
)
strawberry.type(TierChangeScheduled, description="The new tier takes effect at `effectiveAt`.")
strawberry.type(TierChangeCanceled, description="The pending change is withdrawn.")
strawberry.type(CancellationScheduled, description="Ends at `effectiveAt` (the period's end).")
strawberry.type(SubscriptionResumed, description="The pending cancellation is withdrawn.")
strawberry.type(PortalSession, name="BillingPortalSession", description="Send the user to `url`.")
strawberry.type(NoSubscription, description="Refused: there is no paid subscription to change.")
strawberry.type(NothingToResume, description="Refused: no cancellation is pending.")
strawberry.type(StripeNotReady, description="Refused: Stripe lacks the tier's prices.")

StartCheckoutResult = Annotated[
    CheckoutStarted | CheckoutUnavailable | StripeNotReady,
    strawberry.union("StartCheckoutResult"),
]
ChangeTierResult = Annotated[
    TierChangeScheduled
    | TierChangeCanceled
    | CancellationScheduled
    | NoSubscription
    | StripeNotReady,
    strawberry.union("ChangeTierResult"),
]
CancelSubscriptionResult = Annotated[
    CancellationScheduled | NoSubscription, strawberry.union("CancelSubscriptionResult")
]
ResumeSubscriptionResult = Annotated[
    SubscriptionResumed | NoSubscription | NothingToResume,
    strawberry.union("ResumeSubscriptionResult"),
]
BillingPortalResult = Annotated[
    PortalSession | NoSubscription, strawberry.union("BillingPortalResult")
]
