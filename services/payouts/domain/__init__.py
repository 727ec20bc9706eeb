"""Pure rules of the payouts service (no I/O, no clock)."""
