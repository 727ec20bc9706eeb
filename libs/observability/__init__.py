"""Metrics (Prometheus), structured logs (structlog, JSON) and health endpoints of every worker."""
