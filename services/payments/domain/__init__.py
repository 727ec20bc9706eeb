"""The payments domain: pure functions of facts (no I/O, no clock)."""
