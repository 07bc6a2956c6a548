"""Stripe's webhook routes: `/webhooks/stripe` (snapshot events), `/webhooks/stripe/thin`."""
