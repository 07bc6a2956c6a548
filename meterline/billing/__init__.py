"""The pure core: catalog of event types and tiers, pricing, billing periods. No I/O."""
