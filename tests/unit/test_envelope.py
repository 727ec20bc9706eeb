"""schemas.envelope: CloudEvents 1.0 structured JSON mode, Settle's extensions, fingerprints.

The conformance tests use the official CloudEvents SDK (``cloudevents`` ≥ 2, the ``core`` API) in
both directions: what the SDK writes we decode, what we write the SDK reads.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs import limits
from libs.errors import InvalidEventError, PermanentError
from libs.messaging.envelope import OPERATOR_SOURCE_PREFIX
from schemas.envelope import CONTENT_TYPE, decode_data, decode_raw, encode, fingerprint_of
from schemas.inputs import AllocationProvisioned, ContractCreated

AT = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)

PROVISIONED = AllocationProvisioned(
    allocation_id="alloc-1",
    contract_id="contract-1",
    renter_id="renter-1",
    supplier_id="supplier-1",
    server_id="server-1",
    gpu_model="H100",
    gpu_count=8,
)


def a_body(**overrides: Any) -> dict[str, Any]:
    """A valid structured-mode CloudEvent as a JSON object."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/platform/lifecycle",
        "type": "gpu.allocation.provisioned",
        "time": "2026-12-01T10:00:00Z",
        "datacontenttype": "application/json",
        "subject": "alloc-1",
        "data": PROVISIONED.model_dump(mode="json"),
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _ABSENT}


_ABSENT: Any = object()


def raw_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def reason_of(value: bytes | None) -> str:
    with pytest.raises(InvalidEventError) as caught:
        decode_raw(value)
    return str(caught.value)


# --- round trip -----------------------------------------------------------------------------------


def test_encode_decode_round_trip_with_a_model() -> None:
    encoded = encode(
        event_id="evt-1",
        source="/platform/lifecycle",
        type="gpu.allocation.provisioned",
        time=AT,
        data=PROVISIONED,
        subject="alloc-1",
        correlationid="cycle-7",
        causationid="evt-0",
        schemaversion=2,
    )
    event = decode_data(decode_raw(encoded), AllocationProvisioned)
    assert event.id == "evt-1"
    assert event.source == "/platform/lifecycle"
    assert event.type == "gpu.allocation.provisioned"
    assert event.time == AT
    assert event.subject == "alloc-1"
    assert event.correlationid == "cycle-7"
    assert event.causationid == "evt-0"
    assert event.schemaversion == 2
    assert event.data == PROVISIONED
    assert len(event.fingerprint) == 32  # SHA-256


def test_encode_writes_structured_cloudevents_json() -> None:
    encoded = encode(event_id="evt-1", source="/s", type="t", time=AT, data={"a": "1"})
    body = json.loads(encoded)
    assert body == {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/s",
        "type": "t",
        "time": "2026-12-01T10:00:00Z",
        "datacontenttype": "application/json",
        "schemaversion": 1,
        "data": {"a": "1"},
    }  # optional attributes that are None are left out, not written as null
    assert CONTENT_TYPE == "application/cloudevents+json"


def test_encode_writes_decimals_and_times_of_models_as_strings() -> None:
    created = ContractCreated.model_validate(
        {
            "contract_id": "c-1",
            "renter_id": "r-1",
            "currency": "USD",
            "billing_mode": "postpaid",
            "price_per_gpu_hour": "2.350",
            "supplier_rate_per_gpu_hour": "1.9",
            "commitment_per_period": "0",
            "tax_rate": "0.2",
            "starts_at": "2026-12-01T00:00:00Z",
            "billing_anchor_day": 1,
        }
    )
    data = json.loads(encode(event_id="e", source="/s", type="contract.created", time=AT, data=created))["data"]
    assert data["price_per_gpu_hour"] == "2.350"  # the string as given: no float, places kept
    assert data["starts_at"] == "2026-12-01T00:00:00Z"
    assert (
        decode_data(
            decode_raw(encode(event_id="e", source="/s", type="t", time=AT, data=created)), ContractCreated
        ).data
        == created
    )


def test_encode_normalizes_time_to_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    body = json.loads(encode(event_id="e", source="/s", type="t", time=local, data={}))
    assert body["time"] == "2026-12-01T10:00:00Z"


def test_encode_refuses_to_emit_an_oversized_event() -> None:
    with pytest.raises(AssertionError, match="refusing to emit"):
        encode(event_id="e", source="/s", type="t", time=AT, data={"pad": "x" * limits.MAX_EVENT_BYTES})


def test_unknown_extension_attributes_are_tolerated_and_kept() -> None:
    raw = decode_raw(raw_bytes(a_body(traceparent="00-abc-def-01", partitionkey="alloc-1")))
    assert raw.model_extra == {"traceparent": "00-abc-def-01", "partitionkey": "alloc-1"}


def test_sub_second_event_time_is_floored() -> None:
    raw = decode_raw(raw_bytes(a_body(time="2026-12-01T10:00:00.999999Z")))
    assert raw.time == AT


# --- every failure of decode_raw says what to fix -------------------------------------------------


def test_tombstone_is_refused() -> None:
    assert "tombstone" in reason_of(None)


@pytest.mark.parametrize("value", [b"", b"not json", b"{", b"\xff\xfe", b'{"a": 1,}'])
def test_not_json_is_refused(value: bytes) -> None:
    assert reason_of(value).startswith("not JSON")


@pytest.mark.parametrize(
    ("value", "kind"), [(b"[1, 2]", "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "NoneType")]
)
def test_json_that_is_not_an_object_is_refused(value: bytes, kind: str) -> None:
    reason = reason_of(value)
    assert kind in reason
    assert "not an object" in reason


def test_missing_specversion_is_refused() -> None:
    reason = reason_of(raw_bytes(a_body(specversion=_ABSENT)))
    assert "specversion" in reason
    assert "structured mode" in reason  # a binary-mode message would lack it: say so


@pytest.mark.parametrize("version", ["0.3", "1", "2.0", 1.0])
def test_wrong_specversion_is_refused(version: object) -> None:
    reason = reason_of(raw_bytes(a_body(specversion=version)))
    assert "specversion" in reason
    assert "'1.0'" in reason


@pytest.mark.parametrize("attribute", ["id", "type", "source", "time", "data"])
def test_missing_required_attribute_is_named(attribute: str) -> None:
    reason = reason_of(raw_bytes(a_body(**{attribute: _ABSENT})))
    assert reason.startswith("not a valid CloudEvents 1.0 envelope")
    assert f"{attribute}: Field required" in reason


@pytest.mark.parametrize(
    ("attribute", "value", "says"),
    [
        ("id", "", "id"),
        ("id", "x" * (limits.MAX_ID_CHARS + 1), "id"),
        ("time", "2026-12-01T10:00:00+02:00", "not in UTC"),
        ("time", "2026-12-01T10:00:00", "RFC 3339"),
        ("time", 1796119200, "RFC 3339"),
        ("data", "not an object", "data"),
        ("data", [1], "data"),
        ("datacontenttype", "application/xml", "datacontenttype"),
        ("schemaversion", 0, "schemaversion"),
    ],
)
def test_invalid_attribute_is_named(attribute: str, value: object, says: str) -> None:
    reason = reason_of(raw_bytes(a_body(**{attribute: value})))
    assert attribute in reason
    assert says in reason


def test_oversized_message_is_refused_before_parsing() -> None:
    body = a_body()
    body["data"]["pad"] = "x" * limits.MAX_EVENT_BYTES
    value = raw_bytes(body)
    reason = reason_of(value)
    assert f"{len(value)} bytes" in reason
    assert str(limits.MAX_EVENT_BYTES) in reason


def test_size_limit_boundary() -> None:
    """Exactly MAX_EVENT_BYTES is accepted, one byte more is refused (unknown data fields are padding)."""
    body = a_body()
    body["data"]["pad"] = ""
    base = len(raw_bytes(body))
    body["data"]["pad"] = "x" * (limits.MAX_EVENT_BYTES - base)
    assert len(raw_bytes(body)) == limits.MAX_EVENT_BYTES
    decode_raw(raw_bytes(body))
    body["data"]["pad"] += "x"
    assert "limit" in reason_of(raw_bytes(body))


def test_schema_failure_of_data_names_type_and_field() -> None:
    raw = decode_raw(raw_bytes(a_body(data={**PROVISIONED.model_dump(mode="json"), "gpu_count": "8"})))
    with pytest.raises(InvalidEventError) as caught:
        decode_data(raw, AllocationProvisioned)
    assert str(caught.value).startswith("gpu.allocation.provisioned data fails its schema: gpu_count")


def test_many_schema_failures_are_summarized() -> None:
    raw = decode_raw(raw_bytes(a_body(data={})))
    with pytest.raises(InvalidEventError, match="and 2 more"):
        decode_data(raw, AllocationProvisioned)  # 7 required fields, 5 listed


def test_decode_errors_are_permanent_with_a_reason() -> None:
    with pytest.raises(PermanentError) as caught:
        decode_raw(b"[]")
    assert caught.value.reason.startswith("InvalidEventError: not a CloudEvent")


@given(st.binary(max_size=512))
def test_decode_raw_only_ever_raises_invalid_event_error(value: bytes) -> None:
    with contextlib.suppress(InvalidEventError):
        decode_raw(value)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    )
)
def test_decode_raw_on_arbitrary_json_only_raises_invalid_event_error(document: object) -> None:
    with contextlib.suppress(InvalidEventError):
        decode_raw(json.dumps(document).encode())  # json: also writes integers beyond 64 bits


# --- fingerprint -------------------------------------------------------------------------------------


def _reordered(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def fingerprint(value: bytes) -> bytes:
    return fingerprint_of(decode_raw(value))


def test_fingerprint_ignores_key_order_and_whitespace() -> None:
    body = a_body(data={"allocation_id": "a", "nested": {"x": "1", "y": ["2", {"b": 1, "a": 2}]}})
    compact = json.dumps(body, separators=(",", ":")).encode()
    reordered = json.dumps(_reordered(body), indent=4).encode()
    assert compact != reordered
    assert fingerprint(compact) == fingerprint(reordered)


def test_fingerprint_ignores_event_id_and_trace_extensions() -> None:
    """A redelivery under a new id still is the same event (the inbox compares payloads)."""
    assert fingerprint(raw_bytes(a_body())) == fingerprint(raw_bytes(a_body(id="evt-2", traceparent="00-x")))


def test_fingerprint_is_equal_for_equal_instants_written_differently() -> None:
    assert fingerprint(raw_bytes(a_body(time="2026-12-01T10:00:00Z"))) == fingerprint(
        raw_bytes(a_body(time="2026-12-01T10:00:00.000+00:00"))
    )


@pytest.mark.parametrize(
    "change",
    [
        {"data": {**PROVISIONED.model_dump(mode="json"), "gpu_count": 4}},
        {"data": {**PROVISIONED.model_dump(mode="json"), "extra": "1"}},
        {"type": "gpu.allocation.decommissioned"},
        {"source": "/platform/other"},
        {"subject": "alloc-2"},
        {"subject": _ABSENT},
        {"time": "2026-12-01T10:00:01Z"},
    ],
)
def test_fingerprint_changes_with_what_makes_the_event(change: dict[str, Any]) -> None:
    assert fingerprint(raw_bytes(a_body())) != fingerprint(raw_bytes(a_body(**change)))


def test_an_operator_command_is_the_same_command_whenever_and_by_whomever_it_is_sent() -> None:
    command = a_body(source=OPERATOR_SOURCE_PREFIX + "alice", type="payment.retry_requested", data={"command_id": "c"})
    again = {**command, "source": OPERATOR_SOURCE_PREFIX + "bob", "time": "2026-12-02T09:30:00Z", "id": "x"}
    assert fingerprint(raw_bytes(command)) == fingerprint(raw_bytes(again))
    assert fingerprint(raw_bytes(command)) != fingerprint(raw_bytes({**command, "data": {"command_id": "d"}}))
    assert fingerprint(raw_bytes(command)) != fingerprint(raw_bytes({**command, "type": "payment.refund_requested"}))
    assert fingerprint(raw_bytes(command)) != fingerprint(raw_bytes({**command, "source": "/platform/payments"}))


def test_fingerprint_distinguishes_number_from_string() -> None:
    assert fingerprint(raw_bytes(a_body(data={"amount": "1"}))) != fingerprint(raw_bytes(a_body(data={"amount": 1})))


# --- CloudEvents conformance (official SDK) ------------------------------------------------------------
# The SDK is imported in these tests only, so that the rest of this file runs without it; it is a
# test dependency (``cloudevents>=2,<3``), not optional: these tests fail, not skip, without it.


def _sdk_event(**attributes: Any) -> Any:
    from cloudevents.core.v1.event import CloudEvent

    base: dict[str, Any] = {
        "type": "gpu.allocation.provisioned",
        "source": "/platform/lifecycle",
        "id": "evt-sdk-1",
        "time": AT,
        "subject": "alloc-1",
        "datacontenttype": "application/json",
        "correlationid": "cycle-7",
        "causationid": "evt-0",
        "schemaversion": 1,
    }
    base.update(attributes)
    return CloudEvent(
        attributes={k: v for k, v in base.items() if v is not _ABSENT},
        data=PROVISIONED.model_dump(mode="json"),
    )


def test_sdk_structured_kafka_message_decodes_with_decode_raw() -> None:
    from cloudevents.core.bindings import kafka

    message = kafka.to_structured_event(_sdk_event(), key_mapper=lambda _: "alloc-1")
    assert message.headers["content-type"] == CONTENT_TYPE.encode()
    event = decode_data(decode_raw(message.value), AllocationProvisioned)
    assert (event.id, event.type, event.source, event.subject) == (
        "evt-sdk-1",
        "gpu.allocation.provisioned",
        "/platform/lifecycle",
        "alloc-1",
    )
    assert event.time == AT
    assert (event.correlationid, event.causationid, event.schemaversion) == ("cycle-7", "evt-0", 1)
    assert event.data == PROVISIONED


def test_sdk_structured_http_body_with_generated_id_and_time_decodes() -> None:
    from cloudevents.core.bindings import http

    # The SDK fills id (UUID4) and time (now, with microseconds); we floor the time to the second.
    sdk_event = _sdk_event(
        id=_ABSENT,
        time=_ABSENT,
        correlationid=_ABSENT,
        causationid=_ABSENT,
        schemaversion=_ABSENT,
        datacontenttype=_ABSENT,
    )
    message = http.to_structured_event(sdk_event)
    raw = decode_raw(message.body)
    assert raw.id == sdk_event.get_id()
    assert raw.time == sdk_event.get_time().replace(microsecond=0)
    assert raw.schemaversion == 1  # default when the extension is absent
    assert decode_data(raw, AllocationProvisioned).data == PROVISIONED


def test_sdk_and_settle_fingerprints_agree() -> None:
    from cloudevents.core.bindings import kafka

    ours = encode(
        event_id="other-id",
        source="/platform/lifecycle",
        type="gpu.allocation.provisioned",
        time=AT,
        data=PROVISIONED,
        subject="alloc-1",
    )
    theirs = kafka.to_structured_event(_sdk_event()).value
    assert fingerprint(ours) == fingerprint(theirs)


def test_settle_encoding_is_read_by_the_sdk_over_kafka_and_http() -> None:
    from cloudevents.core.bindings import http, kafka

    encoded = encode(
        event_id="evt-1",
        source="/settle/metering",
        type="gpu.allocation.provisioned",
        time=AT,
        data=PROVISIONED,
        subject="alloc-1",
        correlationid="cycle-7",
        causationid="evt-0",
        schemaversion=3,
    )
    from_kafka = kafka.from_kafka_event(
        kafka.KafkaMessage(headers={"content-type": CONTENT_TYPE.encode()}, key=b"contract-1", value=encoded)
    )
    from_http = http.from_http_event(http.HTTPMessage(headers={"content-type": CONTENT_TYPE}, body=encoded))
    for sdk_event in (from_kafka, from_http):
        assert sdk_event.get_specversion() == "1.0"
        assert sdk_event.get_id() == "evt-1"
        assert sdk_event.get_source() == "/settle/metering"
        assert sdk_event.get_type() == "gpu.allocation.provisioned"
        assert sdk_event.get_time() == AT
        assert sdk_event.get_subject() == "alloc-1"
        assert sdk_event.get_datacontenttype() == "application/json"
        assert sdk_event.get_extension("correlationid") == "cycle-7"
        assert sdk_event.get_extension("causationid") == "evt-0"
        assert sdk_event.get_extension("schemaversion") == 3
        assert sdk_event.get_data() == PROVISIONED.model_dump(mode="json")
    assert from_kafka.get_extension("partitionkey") == "contract-1"  # the Kafka key, per the binding


def test_sdk_refuses_what_we_refuse_and_we_refuse_non_utc_sdk_times() -> None:
    from cloudevents.core.bindings import http

    local = _sdk_event(time=AT.astimezone(timezone(timedelta(hours=2))))
    assert "not in UTC" in reason_of(http.to_structured_event(local).body)
