"""Pure: a verified Stripe event (parsed JSON) → the normalized ``processor.events.v1`` event, or nothing.

No I/O, no clock. Which Stripe types Settle listens to, and what each field of the normalized event
is taken from, is decided here and only here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from libs.ids import derive_id
from schemas.events import ProcessorEventReceived

STRIPE_TYPES: dict[str, str] = {
    "payment_intent.succeeded": "processor.payment_succeeded",
    "payment_intent.payment_failed": "processor.payment_failed",
    "charge.refunded": "processor.charge_refunded",
    "charge.dispute.created": "processor.dispute_opened",
    "charge.dispute.closed": "processor.dispute_closed",
}
"""Stripe event type → our event type. Other types are acknowledged and ignored."""


class MalformedWebhookError(ValueError):
    """Signed by the processor but not an event we can read: refused (HTTP 400), nothing recorded."""


def event_id_for(gateway: str, processor_event_id: str) -> str:
    """The outbox event id: the same for every delivery of one processor event."""
    return derive_id("processor.event", gateway, processor_event_id)


def normalize_stripe(event: Any, *, gateway: str = "stripe") -> tuple[str, str, ProcessorEventReceived] | None:
    """(our event type, key, data) of a Stripe event, or None for a type Settle does not listen to.

    Raises :class:`MalformedWebhookError` when a listened-to event lacks what it must carry.
    """
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise MalformedWebhookError("not a Stripe event object")
    our_type = STRIPE_TYPES.get(event["type"])
    if our_type is None:
        return None
    obj = (event.get("data") or {}).get("object")
    if not isinstance(obj, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("created"), int):
        raise MalformedWebhookError(f"{event.get('type')} without id, created or data.object")
    object_type = str(obj.get("object", ""))
    metadata: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    fields: dict[str, Any] = {
        "gateway": gateway,
        "processor_event_id": event["id"],
        "processor_type": event["type"],
        "object_type": object_type,
        "object_id": obj.get("id"),
        "attempt_id": metadata.get("attempt_id") or None,
        "invoice_number": metadata.get("invoice_number") or None,
        "amount_minor": obj.get("amount"),
        "currency": str(obj.get("currency", "")).upper(),
        "status": obj.get("status"),
        "occurred_at": datetime.fromtimestamp(event["created"], UTC),
    }
    if object_type == "payment_intent":
        fields["payment_id"] = obj.get("id")
        fields["charge_id"] = obj.get("latest_charge") if isinstance(obj.get("latest_charge"), str) else None
        error = obj.get("last_payment_error")
        if isinstance(error, dict):
            code, decline = error.get("code"), error.get("decline_code")
            fields["decline_code"] = f"{code}/{decline}" if code and decline and code != decline else code or decline
    elif object_type == "charge":
        fields["payment_id"] = obj.get("payment_intent")
        fields["charge_id"] = obj.get("id")
        fields["amount_refunded_minor"] = obj.get("amount_refunded")
    elif object_type == "dispute":
        fields["payment_id"] = obj.get("payment_intent")
        fields["charge_id"] = obj.get("charge")
        fields["dispute_id"] = obj.get("id")
        fields["dispute_reason"] = obj.get("reason")
        fields["dispute_status"] = obj.get("status")
    else:
        raise MalformedWebhookError(f"{event['type']} carries a {object_type or 'typeless'} object")
    try:
        data = ProcessorEventReceived.model_validate(fields)
    except ValidationError as error:
        raise MalformedWebhookError(f"{event['type']} {event['id']}: {error.errors()[0]['msg']}") from error
    key = data.payment_id or data.attempt_id or data.object_id
    return our_type, key, data
