"""Schema artifacts (drift), the input contract of docs/billing-rules.md, and validation behaviour.

Validation is checked twice where the JSON Schema can say it: through the pydantic models (what
Settle enforces) and through the generated JSON Schema files (what other producers can check
before publishing), on the same good and bad examples.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from libs import limits
from libs.errors import InvalidEventError
from schemas import events, inputs
from schemas import generate as schema_generation
from schemas.envelope import decode_data, decode_raw, encode
from schemas.topics import BY_NAME, REGISTRY

try:
    import jsonschema
except ModuleNotFoundError:  # a test dependency the lead adds; only the JSON Schema comparison needs it
    jsonschema = None

needs_jsonschema = pytest.mark.skipif(
    jsonschema is None,
    reason="the 'jsonschema' package is not installed: the generated JSON Schemas cannot be compared "
    "with the models (add jsonschema to the test extras)",
)

SCHEMAS_DIR = schema_generation.SCHEMAS_DIR
AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


# --- artifacts ---------------------------------------------------------------------------------------


def test_committed_artifacts_match_the_registry() -> None:
    problems = schema_generation.check()
    assert problems == [], "schema artifacts drifted; run `python -m schemas.generate`:\n" + "\n".join(problems)


def test_generation_is_deterministic_and_canonical() -> None:
    first = schema_generation.generate()
    assert first == schema_generation.generate()
    for path, content in first.items():
        assert content.endswith(b"\n"), path
        assert not content.endswith(b"\n\n"), path
        if path.suffix == ".json":
            document = json.loads(content)
            canonical = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
            assert content.decode() == canonical, f"{path} is not sorted / 2-space indented"


def test_every_event_type_has_a_schema_file_with_id_and_title() -> None:
    artifacts = schema_generation.generate()
    for topic in REGISTRY:
        for event_type, model in topic.types.items():
            path = SCHEMAS_DIR / "json" / topic.name / f"{event_type}.json"
            schema = json.loads(artifacts[path])
            assert schema["$id"] == f"urn:settle:schema:{topic.name}:{event_type}"
            assert schema["title"] == f"{topic.name}/{event_type}"
            assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
            assert set(schema["properties"]) == set(model.model_fields)
    expected = {SCHEMAS_DIR / "json" / t.name / f"{e}.json" for t in REGISTRY for e in t.types}
    expected |= {
        SCHEMAS_DIR / "json" / "cloudevents-envelope.json",
        SCHEMAS_DIR / "json" / "topics.json",
        SCHEMAS_DIR / "asyncapi.yaml",
    }
    assert set(artifacts) == expected


def test_topics_json_is_the_registry() -> None:
    document = json.loads((SCHEMAS_DIR / "json" / "topics.json").read_bytes())
    assert [t["name"] for t in document["topics"]] == [t.name for t in REGISTRY]
    for entry in document["topics"]:
        topic = BY_NAME[entry["name"]]
        assert (entry["key"], entry["partitions"], entry["producer"], entry["dlq"], entry["description"]) == (
            topic.key,
            topic.partitions,
            topic.producer,
            f"{topic.name}.dlq",
            topic.description,
        )
        assert [e["type"] for e in entry["event_types"]] == list(topic.types)
        for event_type in entry["event_types"]:
            model = topic.types[event_type["type"]]
            assert event_type["model"] == f"{model.__module__}.{model.__qualname__}"
            assert (SCHEMAS_DIR / "json" / event_type["schema"]).is_file()


def test_check_reports_missing_differing_and_stale_files(tmp_path: Path) -> None:
    scratch = tmp_path / "schemas"
    scratch.mkdir()
    assert all(p.startswith("missing: schemas/") for p in schema_generation.check(scratch))
    schema_generation.write(scratch)
    assert schema_generation.check(scratch) == []
    (scratch / "json" / "topics.json").write_text("{}\n")
    (scratch / "json" / "wallets.v1" / "wallet.topped_up.json").unlink()
    (scratch / "json" / "old.v0").mkdir()
    (scratch / "json" / "old.v0" / "gone.json").write_text("{}\n")
    assert sorted(schema_generation.check(scratch)) == [
        "differs: schemas/json/topics.json",
        "missing: schemas/json/wallets.v1/wallet.topped_up.json",
        "stale: schemas/json/old.v0/gone.json",
    ]
    done = schema_generation.write(scratch)
    assert "removed: schemas/json/old.v0/gone.json" in done
    assert not (scratch / "json" / "old.v0").exists()
    assert schema_generation.check(scratch) == []


def test_main_check_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema_generation.main(["--check"]) == 0
    scratch = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR / "json", scratch / "json")  # everything but asyncapi.yaml
    real_check = schema_generation.check
    monkeypatch.setattr(schema_generation, "check", lambda: real_check(scratch))
    assert schema_generation.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "missing: schemas/asyncapi.yaml" in out
    assert "python -m schemas.generate" in out
    assert schema_generation.main(["--bogus"]) == 2


# --- AsyncAPI ------------------------------------------------------------------------------------------

_ASYNCAPI_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")


def _resolve_pointer(document: Any, pointer: str) -> Any:
    node = document
    for part in pointer.lstrip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_asyncapi_document_describes_every_topic() -> None:
    document = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text())
    assert document["asyncapi"] == "3.0.0"
    assert document["defaultContentType"] == "application/cloudevents+json"
    assert list(document["channels"]) == [t.name for t in REGISTRY]
    for topic in REGISTRY:
        channel = document["channels"][topic.name]
        assert channel["address"] == topic.name
        assert channel["bindings"]["kafka"]["partitions"] == topic.partitions
        assert list(channel["messages"]) == list(topic.types)
        direction = "receive" if topic.producer in {"platform", "operator"} else "send"
        operation = document["operations"][f"{direction}.{topic.name}"]
        assert operation["channel"] == {"$ref": f"#/channels/{topic.name}"}
        assert [m["$ref"] for m in operation["messages"]] == [
            f"#/channels/{topic.name}/messages/{event_type}" for event_type in topic.types
        ]
        for event_type in topic.types:
            message = _resolve_pointer(document, channel["messages"][event_type]["$ref"][1:])
            envelope_ref, typed = message["payload"]["schema"]["allOf"]
            assert envelope_ref == {"$ref": "./json/cloudevents-envelope.json"}
            assert typed["properties"]["type"] == {"const": event_type}
            assert typed["properties"]["data"] == {"$ref": f"./json/{topic.name}/{event_type}.json"}
    for key in [*document["channels"], *document["operations"], *document["components"]["messages"]]:
        assert _ASYNCAPI_KEY.match(key), key


def test_asyncapi_references_all_resolve() -> None:
    document = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text())
    references = _refs(document)
    assert references
    for reference in references:
        if reference.startswith("#/"):
            _resolve_pointer(document, reference[1:])
        else:
            assert (SCHEMAS_DIR / reference).is_file(), reference


# --- the input contract (docs/billing-rules.md, "Input contract") ------------------------------------------
# Transcribed from the spec: topic → (key, {type: documented data fields}).

PRICED_FIELDS = {
    "price_per_gpu_hour",
    "supplier_rate_per_gpu_hour",
    "commitment_per_period",
    "credit_limit",
    "sla_tiers",
    "tax_rate",
}
INPUT_CONTRACT: dict[str, tuple[str, dict[str, set[str]]]] = {
    "infra.lifecycle.v1": (
        "allocation_id",
        {
            "gpu.allocation.provisioned": {
                "allocation_id",
                "contract_id",
                "renter_id",
                "supplier_id",
                "server_id",
                "gpu_model",
                "gpu_count",
            },
            "gpu.allocation.decommissioned": {"allocation_id"},
            "gpu.maintenance.started": {"allocation_id", "window_id"},
            "gpu.maintenance.ended": {"allocation_id", "window_id"},
            "gpu.outage.started": {"allocation_id", "incident_id"},
            "gpu.outage.ended": {"allocation_id", "incident_id"},
        },
    ),
    "contracts.v1": (
        "contract_id",
        {
            "contract.created": {
                "contract_id",
                "renter_id",
                "currency",
                "billing_mode",
                "starts_at",
                "ends_at",
                "billing_anchor_day",
            }
            | PRICED_FIELDS,
            "contract.amended": {"contract_id", "effective_at"} | PRICED_FIELDS,
            "contract.terminated": {"contract_id", "effective_at"},
        },
    ),
    "wallets.v1": ("contract_id", {"wallet.topped_up": {"contract_id", "amount", "currency", "payment_ref"}}),
}
# Fields the spec allows to be null or leaves out ("any of the priced fields above").
NULLABLE = {"contract.created": {"credit_limit", "ends_at"}, "contract.amended": PRICED_FIELDS}


@pytest.mark.parametrize(
    ("topic_name", "event_type"),
    [(topic, event_type) for topic, (_, types) in INPUT_CONTRACT.items() for event_type in types],
)
def test_input_contract_type_is_registered_with_its_key(topic_name: str, event_type: str) -> None:
    key, types = INPUT_CONTRACT[topic_name]
    topic = BY_NAME[topic_name]
    assert topic.key == key
    assert topic.producer == "platform"
    model = topic.model_for(event_type)
    assert model is not None, f"{event_type} missing from {topic_name}"
    documented = types[event_type]
    assert documented <= set(model.model_fields), documented - set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    # An undocumented field may only be an optional extension (payment_terms_days, meter_prices).
    assert required <= documented
    assert key in required  # the message key is in the data
    # What the spec lets be null is accepted as an explicit null.
    _, example, _ = EXAMPLES.get(event_type, (None, None, None))
    if example is not None:
        model.model_validate(example(**dict.fromkeys(NULLABLE.get(event_type, set()) - {"price_per_gpu_hour"})))


def test_input_models_are_tolerant_and_owned_events_strict() -> None:
    for topic in REGISTRY:
        for model in topic.types.values():
            owned = model.__module__ == events.__name__
            assert owned or model.__module__ == inputs.__name__, model
            assert topic.producer != "platform" or not owned, f"{topic.name} is the platform's"
            assert model.model_config.get("extra") == ("forbid" if owned else "ignore"), model
            assert model.model_config.get("frozen") is True, model


# --- examples ---------------------------------------------------------------------------------------------


def provisioned(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "allocation_id": "alloc-1",
        "contract_id": "contract-1",
        "renter_id": "renter-1",
        "supplier_id": "supplier-1",
        "server_id": "server-1",
        "gpu_model": "H100",
        "gpu_count": 8,
    }
    return _apply(data, changes)


def created(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "contract_id": "contract-1",
        "renter_id": "renter-1",
        "currency": "USD",
        "billing_mode": "postpaid",
        "price_per_gpu_hour": "2.35",
        "supplier_rate_per_gpu_hour": "1.90",
        "commitment_per_period": "0",
        "credit_limit": None,
        "sla_tiers": [{"below_uptime": "0.999", "credit_percent": "10"}],
        "tax_rate": "0.20",
        "starts_at": "2026-12-01T00:00:00Z",
        "ends_at": None,
        "billing_anchor_day": 1,
    }
    return _apply(data, changes)


def amended(**changes: Any) -> dict[str, Any]:
    return _apply(
        {"contract_id": "contract-1", "effective_at": "2026-12-15T12:00:00Z", "price_per_gpu_hour": "3"},
        changes,
    )


def topped_up(**changes: Any) -> dict[str, Any]:
    return _apply({"contract_id": "contract-1", "amount": "100.00", "currency": "USD", "payment_ref": "pay-1"}, changes)


_DROP: Any = object()


def _apply(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for name, value in changes.items():
        if value is _DROP:
            data.pop(name, None)
        else:
            data[name] = value
    return data


EXAMPLES: dict[str, tuple[type[BaseModel], Any, str]] = {
    "gpu.allocation.provisioned": (inputs.AllocationProvisioned, provisioned, "infra.lifecycle.v1"),
    "contract.created": (inputs.ContractCreated, created, "contracts.v1"),
    "contract.amended": (inputs.ContractAmended, amended, "contracts.v1"),
    "wallet.topped_up": (inputs.WalletToppedUp, topped_up, "wallets.v1"),
}


def refusal(model: type[BaseModel], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return str(caught.value)


# Field-level cases: (event type, field, value, accepted?). The JSON Schema must agree on each.
FIELD_CASES: list[tuple[str, str, Any, bool]] = [
    # decimals are strings
    ("contract.created", "price_per_gpu_hour", "2.35", True),
    ("contract.created", "price_per_gpu_hour", "0", True),
    ("contract.created", "price_per_gpu_hour", 2.35, False),
    ("contract.created", "price_per_gpu_hour", 2, False),
    ("contract.created", "price_per_gpu_hour", "-1", False),
    ("contract.created", "price_per_gpu_hour", "1e3", False),
    ("contract.created", "price_per_gpu_hour", "NaN", False),
    ("contract.created", "price_per_gpu_hour", "0.1234567890123", False),
    ("contract.created", "price_per_gpu_hour", "", False),
    ("wallet.topped_up", "amount", "0.01", True),
    ("wallet.topped_up", "amount", "0", False),
    ("wallet.topped_up", "amount", "0.00", False),
    ("wallet.topped_up", "amount", "-5", False),
    ("wallet.topped_up", "amount", 100, False),
    # gpu_count is a positive JSON integer
    ("gpu.allocation.provisioned", "gpu_count", 1, True),
    ("gpu.allocation.provisioned", "gpu_count", limits.MAX_GPU_COUNT, True),
    ("gpu.allocation.provisioned", "gpu_count", 0, False),
    ("gpu.allocation.provisioned", "gpu_count", -1, False),
    ("gpu.allocation.provisioned", "gpu_count", "8", False),
    ("gpu.allocation.provisioned", "gpu_count", limits.MAX_GPU_COUNT + 1, False),
    ("gpu.allocation.provisioned", "gpu_count", None, False),
    # ids: non-empty, at most 128 printable ASCII characters
    ("gpu.allocation.provisioned", "allocation_id", "a" * limits.MAX_ID_CHARS, True),
    ("gpu.allocation.provisioned", "allocation_id", "a" * (limits.MAX_ID_CHARS + 1), False),
    ("gpu.allocation.provisioned", "allocation_id", "", False),
    ("gpu.allocation.provisioned", "allocation_id", "alloc 1", False),
    ("gpu.allocation.provisioned", "allocation_id", "allocé", False),
    ("gpu.allocation.provisioned", "allocation_id", 17, False),
    ("gpu.allocation.provisioned", "gpu_model", "", False),
    ("gpu.allocation.provisioned", "gpu_model", "x" * (limits.MAX_TEXT_CHARS + 1), False),
    # times: RFC 3339 in UTC
    ("contract.created", "starts_at", "2026-12-01T00:00:00Z", True),
    ("contract.created", "starts_at", "2026-12-01T00:00:00+00:00", True),
    ("contract.created", "starts_at", "2026-12-01T00:00:00.250Z", True),
    ("contract.created", "starts_at", "2026-12-01T00:00:00", False),
    ("contract.created", "starts_at", "2026-12-01T02:00:00+02:00", False),
    ("contract.created", "starts_at", "2026-12-01", False),
    ("contract.created", "starts_at", "2026-12-01 00:00:00Z", False),
    ("contract.created", "starts_at", "2026-W48-2T00:00:00Z", False),
    ("contract.created", "starts_at", "20261201T000000Z", False),
    ("contract.created", "starts_at", 1796083200, False),
    # currencies: ISO 4217 with a minor unit
    ("contract.created", "currency", "USD", True),
    ("contract.created", "currency", "JPY", True),
    ("contract.created", "currency", "KWD", True),
    ("contract.created", "currency", "XXX", False),
    ("contract.created", "currency", "usd", False),
    ("contract.created", "currency", "ABC", False),
    ("contract.created", "currency", "US", False),
    ("wallet.topped_up", "currency", "XAU", False),
    # billing anchor day 1..28, a JSON integer
    ("contract.created", "billing_anchor_day", 1, True),
    ("contract.created", "billing_anchor_day", 28, True),
    ("contract.created", "billing_anchor_day", 0, False),
    ("contract.created", "billing_anchor_day", 29, False),
    ("contract.created", "billing_anchor_day", "1", False),
    # enumerations and lists
    ("contract.created", "billing_mode", "prepaid", True),
    ("contract.created", "billing_mode", "Postpaid", False),
    ("contract.created", "sla_tiers", [], True),
    (
        "contract.created",
        "sla_tiers",
        [{"below_uptime": "0.99", "credit_percent": "5"}] * limits.MAX_SLA_TIERS,
        True,
    ),
    (
        "contract.created",
        "sla_tiers",
        [{"below_uptime": "0.99", "credit_percent": "5"}] * (limits.MAX_SLA_TIERS + 1),
        False,
    ),
    ("contract.created", "sla_tiers", [{"below_uptime": 0.99, "credit_percent": "5"}], False),
    ("contract.created", "payment_terms_days", 366, False),
    ("contract.created", "meter_prices", {"egress_gb": "0.05"}, True),
    ("contract.created", "meter_prices", {"Egress": "0.05"}, False),
    # unknown fields on input events are tolerated (the platform may add fields)
    ("contract.created", "added_by_platform_later", {"any": ["thing"]}, True),
    ("gpu.allocation.provisioned", "region", "eu-west", True),
    # a documented field the spec says "may be null"
    ("contract.created", "credit_limit", "5000", True),
    ("contract.created", "ends_at", "2027-12-01T00:00:00Z", True),
]

# Rules only the models enforce (beyond one field's type, or not expressible in JSON Schema).
MODEL_ONLY_CASES: list[tuple[str, dict[str, Any], str]] = [
    # JSON Schema counts 8.0 as an integer; pydantic's strict int refuses the float.
    ("gpu.allocation.provisioned", {"gpu_count": 8.0}, "gpu_count"),
    ("gpu.allocation.provisioned", {"gpu_count": True}, "gpu_count"),
    ("contract.created", {"billing_anchor_day": 1.0}, "billing_anchor_day"),
    ("contract.created", {"tax_rate": "1.01"}, "tax_rate is a fraction in [0, 1]"),
    ("contract.created", {"tax_rate": "-0.01"}, "tax_rate"),
    ("contract.created", {"sla_tiers": [{"below_uptime": "0", "credit_percent": "10"}]}, "below_uptime"),
    ("contract.created", {"sla_tiers": [{"below_uptime": "1.0001", "credit_percent": "10"}]}, "below_uptime"),
    (
        "contract.created",
        {"sla_tiers": [{"below_uptime": "0.99", "credit_percent": "100.01"}]},
        "credit_percent",
    ),
    ("contract.created", {"sla_tiers": [{"below_uptime": "0.99", "credit_percent": "-1"}]}, "credit_percent"),
    ("contract.created", {"ends_at": "2026-12-01T00:00:00Z"}, "ends_at must be after starts_at"),
    ("contract.created", {"starts_at": "2026-02-30T00:00:00Z"}, "starts_at"),
    ("contract.amended", {"price_per_gpu_hour": _DROP}, "an amendment must change at least one priced field"),
    ("contract.amended", {"price_per_gpu_hour": None, "tax_rate": None}, "at least one priced field"),
    (
        "contract.amended",
        {"price_per_gpu_hour": _DROP, "note": "unknown fields are not priced"},
        "priced field",
    ),
]


def test_an_amendment_may_remove_the_credit_limit_with_an_explicit_null() -> None:
    amendment = inputs.ContractAmended.model_validate(amended(price_per_gpu_hour=_DROP, credit_limit=None))
    assert amendment.credit_limit is None
    assert "credit_limit" in amendment.model_fields_set


@pytest.mark.parametrize(("event_type", "field", "value", "accepted"), FIELD_CASES)
def test_model_field_validation(event_type: str, field: str, value: Any, accepted: bool) -> None:
    model, example, _ = EXAMPLES[event_type]
    data = example(**{field: value})
    if accepted:
        model.model_validate(data)
    else:
        assert field in refusal(model, data)


@pytest.mark.parametrize(("event_type", "changes", "says"), MODEL_ONLY_CASES)
def test_model_rule_validation(event_type: str, changes: dict[str, Any], says: str) -> None:
    model, example, _ = EXAMPLES[event_type]
    assert says in refusal(model, example(**changes))


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_good_examples_pass_the_envelope_path(event_type: str) -> None:
    model, example, topic_name = EXAMPLES[event_type]
    encoded = encode(event_id="evt-1", source="/platform", type=event_type, time=AT, data=example())
    raw = decode_raw(encoded)
    topic_model = BY_NAME[topic_name].model_for(raw.type)
    assert topic_model is model
    assert decode_data(raw, model).data == model.model_validate(example())


def test_a_json_number_price_is_refused_with_a_readable_reason() -> None:
    body = encode(
        event_id="e",
        source="/platform",
        type="contract.created",
        time=AT,
        data=created(price_per_gpu_hour=2.35),
    )
    with pytest.raises(InvalidEventError) as caught:
        decode_data(decode_raw(body), inputs.ContractCreated)
    assert str(caught.value) == (
        "contract.created data fails its schema: price_per_gpu_hour: Value error, "
        'decimals are JSON strings, e.g. "2.35" (numbers are refused: no floats)'
    )


def test_decimal_strings_keep_their_value_and_places() -> None:
    contract = inputs.ContractCreated.model_validate(created(price_per_gpu_hour="2.350"))
    assert contract.price_per_gpu_hour == Decimal("2.350")
    assert contract.model_dump(mode="json")["price_per_gpu_hour"] == "2.350"


def test_sub_second_times_are_floored_to_the_second() -> None:
    contract = inputs.ContractCreated.model_validate(created(starts_at="2026-12-01T00:00:00.999999Z"))
    assert contract.starts_at == datetime(2026, 12, 1, tzinfo=UTC)
    ticked = inputs.ClockTicked.model_validate({"at": "2026-12-01T10:59:59.5+00:00"})
    assert ticked.at == datetime(2026, 12, 1, 10, 59, 59, tzinfo=UTC)


def test_aware_python_datetimes_are_normalized_to_utc() -> None:
    local = datetime(2026, 12, 1, 10, 45, 30, 123, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    mark = events.Watermark(through=local, partition=0, source="metering")
    assert mark.through.utcoffset() == timedelta(0)
    assert mark.through == datetime(2026, 12, 1, 5, 15, 30, tzinfo=UTC)
    with pytest.raises(ValidationError, match="naive datetime"):
        events.Watermark(through=datetime(2026, 12, 1), partition=0, source="metering")


def test_emitted_decimals_are_plain_strings_our_consumers_accept() -> None:
    """Decimal arithmetic makes exponent forms (0 × 1E-12 → 0E-12); the wire must not see them."""
    posted = events.TransferPosted(
        transfer_id="t",
        entry_id="e",
        from_account="a",
        to_account="b",
        amount=Decimal(0) * Decimal("0.000000000001"),
        currency="USD",
    )
    assert posted.model_dump(mode="json")["amount"] == "0.000000000000"
    encoded = encode(event_id="e", source="/s", type="journal.transfer_posted", time=AT, data=posted)
    assert decode_data(decode_raw(encoded), events.TransferPosted).data == posted
    with pytest.raises(ValidationError, match="not a plain decimal"):
        events.TransferPosted(
            transfer_id="t",
            entry_id="e",
            from_account="a",
            to_account="b",
            amount=Decimal("1E+30"),
            currency="USD",
        )


def test_unknown_fields_on_owned_events_are_refused() -> None:
    data = {"through": "2026-12-01T10:00:00Z", "partition": 0, "source": "metering"}
    events.Watermark.model_validate(data)
    reason = refusal(events.Watermark, {**data, "surprise": 1})
    assert "surprise" in reason
    assert "Extra inputs are not permitted" in reason


def test_owned_events_and_input_events_are_frozen() -> None:
    contract = inputs.ContractCreated.model_validate(created())
    with pytest.raises(ValidationError):
        contract.tax_rate = Decimal("0.5")  # type: ignore[misc]


def test_payload_size_limit_is_enforced_by_envelope_decoding() -> None:
    """An input event padded with a tolerated unknown field is valid data but too big a message."""
    data = created(padding="")
    body = {
        "specversion": "1.0",
        "id": "e",
        "source": "/platform",
        "type": "contract.created",
        "time": "2026-12-01T00:00:00Z",
        "data": data,
    }
    base = len(json.dumps(body).encode())
    data["padding"] = "x" * (limits.MAX_EVENT_BYTES - base)
    exact = json.dumps(body).encode()
    assert len(exact) == limits.MAX_EVENT_BYTES
    decode_data(decode_raw(exact), inputs.ContractCreated)
    data["padding"] += "x"
    with pytest.raises(InvalidEventError, match=f"the limit is {limits.MAX_EVENT_BYTES}"):
        decode_raw(json.dumps(body).encode())


# --- the JSON Schemas agree with the models -------------------------------------------------------------


def _schema_for(topic_name: str, event_type: str) -> Any:
    assert jsonschema is not None
    schema = json.loads((SCHEMAS_DIR / "json" / topic_name / f"{event_type}.json").read_bytes())
    return jsonschema.Draft202012Validator(schema)


def _schema_accepts(topic_name: str, event_type: str, data: Any) -> bool:
    return bool(_schema_for(topic_name, event_type).is_valid(data))


@needs_jsonschema
def test_generated_json_schemas_are_valid_draft_2020_12() -> None:
    assert jsonschema is not None
    for path, content in schema_generation.generate().items():
        if path.suffix == ".json" and path.name != "topics.json":
            jsonschema.Draft202012Validator.check_schema(json.loads(content))


@needs_jsonschema
@pytest.mark.parametrize(("event_type", "field", "value", "accepted"), FIELD_CASES)
def test_json_schema_agrees_with_model_on_field(event_type: str, field: str, value: Any, accepted: bool) -> None:
    _, example, topic_name = EXAMPLES[event_type]
    assert _schema_accepts(topic_name, event_type, example(**{field: value})) is accepted


@needs_jsonschema
@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_json_schema_accepts_the_good_examples(event_type: str) -> None:
    _, example, topic_name = EXAMPLES[event_type]
    assert _schema_accepts(topic_name, event_type, example())


@needs_jsonschema
def test_envelope_schema_accepts_what_we_encode_and_refuses_what_we_refuse() -> None:
    assert jsonschema is not None
    envelope = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS_DIR / "json" / "cloudevents-envelope.json").read_bytes())
    )
    good = json.loads(
        encode(
            event_id="e",
            source="/s",
            type="t",
            time=AT,
            data=provisioned(),
            correlationid="c",
            causationid="p",
        )
    )
    assert envelope.is_valid(good)
    assert envelope.is_valid({**good, "traceparent": "00-x"})  # unknown extensions tolerated
    for name in ("specversion", "id", "source", "type", "time", "data"):
        assert not envelope.is_valid({k: v for k, v in good.items() if k != name}), name
    assert not envelope.is_valid({**good, "specversion": "0.3"})
    assert not envelope.is_valid({**good, "time": "2026-12-01T12:00:00+02:00"})
    assert not envelope.is_valid({**good, "id": ""})


# Decimal-looking strings, valid and not, to compare the model and the schema on many inputs.
decimal_like = st.one_of(
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{0,14})?", fullmatch=True),
    st.from_regex(r"-?0(\.0{1,13})?", fullmatch=True),
    st.text(alphabet="-+.0123456789eE ", max_size=8),
)


@needs_jsonschema
@given(value=decimal_like)
def test_json_schema_agrees_with_model_on_decimal_strings(value: str) -> None:
    for event_type, field in (
        ("contract.created", "price_per_gpu_hour"),
        ("wallet.topped_up", "amount"),
        ("contract.created", "commitment_per_period"),
    ):
        model, example, topic_name = EXAMPLES[event_type]
        data = example(**{field: value})
        try:
            model.model_validate(data)
            model_accepts = True
        except ValidationError:
            model_accepts = False
        assert _schema_accepts(topic_name, event_type, data) is model_accepts, (field, value)


@needs_jsonschema
@given(
    instant=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
    offset_minutes=st.sampled_from([0, 0, 60, -300, 330]),
    zulu=st.booleans(),
    fraction=st.sampled_from(["", ".5", ".123456", ".1234567"]),
)
def test_json_schema_agrees_with_model_on_times(
    instant: datetime, offset_minutes: int, zulu: bool, fraction: str
) -> None:
    offset = timedelta(minutes=offset_minutes)
    base = instant.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S") + fraction
    if offset_minutes == 0 and zulu:
        text = base + "Z"
    else:
        sign = "-" if offset < timedelta(0) else "+"
        minutes = abs(offset_minutes)
        text = f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    data = created(starts_at=text)
    try:
        inputs.ContractCreated.model_validate(data)
        model_accepts = True
    except ValidationError:
        model_accepts = False
    assert model_accepts is (offset_minutes == 0 and 2000 <= instant.year <= 2099), text  # UTC, a plausible year
    assert _schema_accepts("contracts.v1", "contract.created", data) is model_accepts, text
