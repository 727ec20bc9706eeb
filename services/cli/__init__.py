"""The ``settle`` command line (typer)."""
