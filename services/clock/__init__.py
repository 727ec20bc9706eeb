"""clock: publishes ``clock.ticks.v1`` — the only source of "now" for the fleet (production)."""
