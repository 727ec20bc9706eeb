"""Deterministic identifiers.

Domain code never draws a random id: every id a handler emits is derived from the causing event
(ARCHITECTURE §2), so reprocessing or replaying emits the same ids and downstream dedup holds.
"""

from __future__ import annotations

import hashlib
import uuid

_NAMESPACE = uuid.UUID("6f1d3c2e-5b8a-4e1f-9a63-2c7d0e5b4a91")
_NAMESPACE_BYTES = _NAMESPACE.bytes


def _uuid5_str(text: str) -> str:
    """``str(uuid.uuid5(_NAMESPACE, text))`` without building UUID objects (a hot path)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + text.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derive_id(kind: str, *parts: object) -> str:
    """A UUIDv5 string from a kind and the parts that make the thing unique.

    ``derive_id("usage", allocation_id, hour_start, revision)`` is the same on every run.
    Parts are joined with an unambiguous separator (their ``str`` and length).
    """
    assert kind, "derive_id needs a kind"
    # The kind is not length-prefixed: a "|" in it could collide with a kind plus parts.
    assert "|" not in kind, f"derive_id kind {kind!r} must not contain '|'"
    text = kind + "".join(f"|{len(s)}:{s}" for s in (str(p) for p in parts))
    return _uuid5_str(text)
