"""The pure core of reconciliation: records, matching, breaks, processor report entries."""
