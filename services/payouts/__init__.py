"""The payouts worker: R15 planning (``domain/planning.py``), its consumer, store and ledger entries.
The rails (files and messages that send a planned payout, R16) live in ``services/payouts/rails``."""
