"""Database access: the asyncpg pool, transactions, error mapping and migrations (plain SQL)."""
