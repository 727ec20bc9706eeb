"""The CloudEvents 1.0 envelope (structured JSON mode) with Settle's extension attributes.

Wire form (``content-type: application/cloudevents+json``)::

    {"specversion": "1.0", "id": "...", "source": "/platform/lifecycle", "type": "gpu.allocation.provisioned",
     "time": "2026-12-01T10:00:00Z", "datacontenttype": "application/json", "subject": "alloc-1",
     "correlationid": "...", "causationid": "...", "schemaversion": 1, "data": {...}}

Extension attributes (lower-case alphanumerics, as CloudEvents requires):

* ``correlationid`` — the billing cycle or saga this event belongs to; copied from cause to effect.
* ``causationid`` — the id of the event whose handling emitted this one.
* ``schemaversion`` — version of ``data``'s schema for this ``type`` (upcasters key on it).

Inbound envelopes tolerate unknown extension attributes (they are kept, not validated); ``data`` is
validated separately against the model the topic registry names for ``type``.

The envelope is the kernel's: it knows no event type. ``schemas.envelope`` re-exports it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs import limits
from libs.errors import InvalidEventError
from libs.fields import Id, Text, UtcTime
from libs.times import format_utc

CONTENT_TYPE = "application/cloudevents+json"
D = TypeVar("D", bound=BaseModel)


class RawEnvelope(BaseModel):
    """Envelope attributes with ``data`` still a plain JSON object (first decoding step)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"]
    id: Id
    source: Text
    type: Text
    time: UtcTime
    datacontenttype: Literal["application/json"] = "application/json"
    subject: str | None = Field(default=None, max_length=limits.MAX_TEXT_CHARS)
    dataschema: str | None = Field(default=None, max_length=limits.MAX_TEXT_CHARS)
    correlationid: str | None = Field(default=None, max_length=limits.MAX_ID_CHARS)
    causationid: str | None = Field(default=None, max_length=limits.MAX_ID_CHARS)
    schemaversion: int = Field(default=1, ge=1, le=1000)
    data: dict[str, Any]


class Envelope(BaseModel, Generic[D]):
    """A decoded event: envelope attributes plus validated, typed ``data``."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str
    source: str
    type: str
    time: datetime
    subject: str | None = None
    correlationid: str | None = None
    causationid: str | None = None
    schemaversion: int = 1
    data: D
    fingerprint: bytes = b""
    """SHA-256 of the canonical (type, source, subject, time, data) — type, subject and data alone for an
    operator command: the inbox's payload check (:func:`fingerprint_of`)."""


OPERATOR_SOURCE_PREFIX = "/settle/cli/"
"""Sources of operator commands (``/settle/cli/<user>``). Such a command is named by its command id, and its
envelope time and source are when and by whom it was sent, not what it is: the same command re-run (the
same id and data, another minute, another login) is a duplicate, not an id conflict."""


def fingerprint_of(raw: RawEnvelope) -> bytes:
    """Canonical hash of what makes an event *this* event (ids aside); redelivery keeps it equal. For an
    operator command (:data:`OPERATOR_SOURCE_PREFIX`) only its type, subject and data count."""
    if raw.source.startswith(OPERATOR_SOURCE_PREFIX):
        identity = [raw.type, OPERATOR_SOURCE_PREFIX, raw.subject, None, raw.data]
    else:
        identity = [raw.type, raw.source, raw.subject, format_utc(raw.time), raw.data]
    canonical = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


def decode_raw(value: bytes | None) -> RawEnvelope:
    """Bytes → envelope with untyped data. Every failure says what a human should fix."""
    if value is None:
        raise InvalidEventError("empty message (tombstone): events must carry a CloudEvents body")
    if len(value) > limits.MAX_EVENT_BYTES:
        raise InvalidEventError(f"message is {len(value)} bytes; the limit is {limits.MAX_EVENT_BYTES}")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidEventError(f"not a CloudEvent: the JSON is a {type(document).__name__}, not an object")
    if "specversion" not in document:
        raise InvalidEventError("not a CloudEvent: no 'specversion' attribute (structured mode expected)")
    try:
        return RawEnvelope.model_validate(document)
    except ValidationError as exc:
        raise InvalidEventError("not a valid CloudEvents 1.0 envelope: " + _summarize(exc)) from None


def decode_data(raw: RawEnvelope, model: type[D]) -> Envelope[D]:
    try:
        data = model.model_validate(raw.data)
    except ValidationError as exc:
        raise InvalidEventError(f"{raw.type} data fails its schema: " + _summarize(exc)) from None
    # Every part is validated already (RawEnvelope, the data model): construct without re-validating.
    return Envelope[D].model_construct(
        id=raw.id,
        source=raw.source,
        type=raw.type,
        time=raw.time,
        subject=raw.subject,
        correlationid=raw.correlationid,
        causationid=raw.causationid,
        schemaversion=raw.schemaversion,
        data=data,
        fingerprint=fingerprint_of(raw),
    )


def encode(
    *,
    event_id: str,
    source: str,
    type: str,
    time: datetime,
    data: BaseModel | dict[str, Any],
    subject: str | None = None,
    correlationid: str | None = None,
    causationid: str | None = None,
    schemaversion: int = 1,
) -> bytes:
    """Serialize one event in structured mode. ``data`` models serialize decimals and times as strings."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": type,
        "time": format_utc(time),
        "datacontenttype": "application/json",
        "schemaversion": schemaversion,
        "data": data.model_dump(mode="json") if isinstance(data, BaseModel) else data,
    }
    if subject is not None:
        body["subject"] = subject
    if correlationid is not None:
        body["correlationid"] = correlationid
    if causationid is not None:
        body["causationid"] = causationid
    encoded = orjson.dumps(body)
    assert len(encoded) <= limits.MAX_EVENT_BYTES, f"refusing to emit a {len(encoded)}-byte event"
    return encoded


def _summarize(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
