"""journal: manual ledger transfers requested by finance operators (and the kernel's benchmark load)."""
