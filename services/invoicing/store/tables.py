"""The schema invoicing's tables live in, and the watermark lanes."""

from schemas.topics import CHARGES_RATED

SCHEMA = "invoicing"
PARTITIONS = CHARGES_RATED.partitions
"""Partitions of charges.rated.v1: one watermark lane each."""
