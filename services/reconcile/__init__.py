"""Reconciliation (R17): ledger ↔ processor reports ↔ bank statements, transaction by transaction.

``domain/matching.py`` is pure (no I/O, no clock); ``ledger_source.py`` reads the ledger's cash,
processor clearing and payout movements; ``store.py`` keeps imported lines, runs, matches and breaks;
``imports.py`` turns bank files and processor reports into the domain's records; ``report.py`` renders.
"""
