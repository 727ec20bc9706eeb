"""The schema rating's tables live in."""

SCHEMA = "rating"
