"""Contract terms shared by metering, rating and invoicing: effective-dated versions and periods.

A domain package, not a worker: pure code (``terms``, ``periods``) plus the projection store each
service keeps of ``contracts.v1`` in its own schema (``store``).
"""
