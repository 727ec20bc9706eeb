"""Deterministic identifiers.

Domain code never draws a random id: every id a handler emits is derived from the causing event
(ARCHITECTURE §2), so reprocessing or replaying emits the same ids and downstream dedup holds.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6f1d3c2e-5b8a-4e1f-9a63-2c7d0e5b4a91")


def derive_id(kind: str, *parts: object) -> str:
    """A UUIDv5 string from a kind and the parts that make the thing unique.

    ``derive_id("usage", allocation_id, hour_start, revision)`` is the same on every run.
    Parts are joined with an unambiguous separator (their ``str`` and length).
    """
    assert kind, "derive_id needs a kind"
    # The kind is not length-prefixed: a "|" in it could collide with a kind plus parts.
    assert "|" not in kind, f"derive_id kind {kind!r} must not contain '|'"
    text = kind + "".join(f"|{len(s)}:{s}" for s in (str(p) for p in parts))
    return str(uuid.uuid5(_NAMESPACE, text))
