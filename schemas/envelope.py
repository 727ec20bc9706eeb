"""The CloudEvents envelope, re-exported from the kernel (:mod:`libs.messaging.envelope`), where it lives
because the kernel decodes and encodes every message; event models stay here in ``schemas``."""

from libs.messaging.envelope import (
    CONTENT_TYPE,
    Envelope,
    RawEnvelope,
    decode_data,
    decode_raw,
    encode,
    fingerprint_of,
)

__all__ = ["CONTENT_TYPE", "Envelope", "RawEnvelope", "decode_data", "decode_raw", "encode", "fingerprint_of"]
