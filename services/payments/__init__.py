"""Payments: collect invoices (R14), apply money received (R11), refunds and disputes."""
