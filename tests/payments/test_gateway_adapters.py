"""The gateway port's contract, passed by both adapters over HTTP against a real ``settle fakepsp`` process:
the Stripe adapter (official SDK) and the LedgerPay adapter (aiohttp). What differs between them —
decline codes, and what a processor's "500" means — is in the table of each; the rest is one story."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from libs.errors import ConfigurationError
from libs.settings import Settings
from services.payments.gateways.ledgerpay_adapter import LedgerPayGateway
from services.payments.gateways.port import ChargeRequest, Gateway
from services.payments.gateways.registry import build_gateways
from services.payments.gateways.stripe_adapter import StripeGateway
from tests.payments.processes import admin, fakepsp, free_port

TIMEOUT_S = 1.5


@dataclass(frozen=True)
class Dialect:
    make: Callable[[str, float], Gateway]
    soft: str
    hard: str
    expired: str
    scripted_500: str
    """What the adapter makes of fakepsp's tok_500: Stripe's 500 is ambiguous (unknown); LedgerPay's
    ``result: ERROR`` says nothing was processed (error)."""


DIALECTS = {
    "stripe": Dialect(
        make=lambda base, timeout: StripeGateway(
            api_key="sk_test_fake", api_base=base, timeout_s=timeout, connect_timeout_s=1
        ),
        soft="card_declined/insufficient_funds",
        hard="card_declined/stolen_card",
        expired="expired_card",
        scripted_500="unknown",
    ),
    "ledgerpay": Dialect(
        make=lambda base, timeout: LedgerPayGateway(
            api_base=base + "/ledgerpay", api_key="sk_test_fake", timeout_s=timeout, connect_timeout_s=1
        ),
        soft="51",
        hard="43",
        expired="54",
        scripted_500="error",
    ),
}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with fakepsp(
        "--hang-ms", "4000", "--slow-ms", "200", "--ledgerpay-latency-ms", "30", "--api-key", "sk_test_fake"
    ) as url:
        yield url


@pytest.fixture(params=sorted(DIALECTS))
async def gateway(request: pytest.FixtureRequest, base: str) -> AsyncIterator[tuple[Gateway, Dialect]]:
    dialect = DIALECTS[request.param]
    made = dialect.make(base, TIMEOUT_S)
    try:
        yield made, dialect
    finally:
        await made.close()


def charge_request(token: str = "tok_visa", *, amount: int = 2500, invoice: str | None = None) -> ChargeRequest:
    n = uuid.uuid4().hex[:10]
    return ChargeRequest(
        attempt_id=f"att-{n}",
        idempotency_key=f"key-{n}",
        amount_minor=amount,
        currency="USD",
        token=token,
        invoice_number=invoice or f"INV-{n}",
        renter_id="renter-1",
    )


async def charges_of(base: str, attempt_id: str) -> int:
    stats: dict[str, Any] = await admin(base, "GET", "/_admin/stats")
    return int(stats["charges_by_attempt"].get(attempt_id, 0))


async def test_success_and_a_replay_charge_once(gateway: tuple[Gateway, Dialect], base: str) -> None:
    gw, _ = gateway
    request = charge_request()
    first = await gw.charge(request)
    assert first.outcome == "succeeded" and first.charge_id
    again = await gw.charge(request)
    assert (again.outcome, again.charge_id) == ("succeeded", first.charge_id)
    assert await charges_of(base, request.attempt_id) == 1
    found = await gw.inquire(request.attempt_id, request.idempotency_key)
    assert found.found and found.result is not None
    assert (found.result.outcome, found.result.charge_id) == ("succeeded", first.charge_id)


@pytest.mark.parametrize(("token", "kind"), [("tok_insufficient_funds", "soft"), ("tok_stolen", "hard"),
                                             ("tok_expired", "expired")])  # fmt: skip
async def test_declines_carry_the_processors_code(
    gateway: tuple[Gateway, Dialect], base: str, token: str, kind: str
) -> None:
    gw, dialect = gateway
    request = charge_request(token)
    result = await gw.charge(request)
    assert (result.outcome, result.code) == ("declined", getattr(dialect, kind))
    assert await charges_of(base, request.attempt_id) == 0
    found = await gw.inquire(request.attempt_id, request.idempotency_key)
    assert found.found and found.result is not None and found.result.outcome == "declined"


async def test_a_scripted_500_charges_nothing_and_inquiry_finds_nothing(
    gateway: tuple[Gateway, Dialect], base: str
) -> None:
    gw, dialect = gateway
    request = charge_request("tok_500")
    result = await gw.charge(request)
    assert result.outcome == dialect.scripted_500
    found = await gw.inquire(request.attempt_id, request.idempotency_key)
    assert not found.found and found.result is None
    assert await charges_of(base, request.attempt_id) == 0


async def test_a_timeout_after_the_charge_is_unknown_then_resolved_by_inquiry_never_charged_twice(
    gateway: tuple[Gateway, Dialect], base: str
) -> None:
    gw, _ = gateway
    request = charge_request("tok_timeout_after_charge")
    result = await gw.charge(request)
    assert result.outcome == "unknown"
    found = await gw.inquire(request.attempt_id, request.idempotency_key)
    assert found.found and found.result is not None and found.result.outcome == "succeeded"
    retried = await gw.charge(request)  # the same key: the stored result, not a second charge
    assert (retried.outcome, retried.charge_id) == ("succeeded", found.result.charge_id)
    assert await charges_of(base, request.attempt_id) == 1


async def test_a_dropped_connection_after_the_charge_is_unknown(gateway: tuple[Gateway, Dialect], base: str) -> None:
    gw, _ = gateway
    request = charge_request("tok_drop_after_charge")
    assert (await gw.charge(request)).outcome == "unknown"
    assert await charges_of(base, request.attempt_id) == 1


async def test_slow_but_within_the_timeout_succeeds(gateway: tuple[Gateway, Dialect]) -> None:
    gw, _ = gateway
    assert (await gw.charge(charge_request("tok_slow"))).outcome == "succeeded"


async def test_a_chain_500_then_ok_succeeds_on_the_retry_with_the_same_key(
    gateway: tuple[Gateway, Dialect], base: str
) -> None:
    gw, dialect = gateway
    request = charge_request("tok_chain_500_then_ok")
    assert (await gw.charge(request)).outcome == dialect.scripted_500
    assert (await gw.charge(request)).outcome == "succeeded"
    assert await charges_of(base, request.attempt_id) == 1


async def test_an_outage_is_an_error_and_charges_nothing(gateway: tuple[Gateway, Dialect], base: str) -> None:
    gw, _ = gateway
    request = charge_request()
    await admin(base, "POST", "/_admin/outage", {"on": True})
    try:
        result = await gw.charge(request)
        inquiry = await gw.inquire(request.attempt_id, request.idempotency_key)
    finally:
        await admin(base, "POST", "/_admin/outage", {"on": False})
    assert result.outcome == "error"
    assert inquiry.found and inquiry.result is not None and inquiry.result.outcome == "unknown"  # no answer ≠ none
    assert await charges_of(base, request.attempt_id) == 0


async def test_connection_refused_is_an_error() -> None:
    for name, dialect in DIALECTS.items():
        gw = dialect.make(f"http://127.0.0.1:{free_port()}", TIMEOUT_S)
        try:
            assert (await gw.charge(charge_request())).outcome == "error", name
        finally:
            await gw.close()


async def test_refunds_are_capped_at_the_charge(gateway: tuple[Gateway, Dialect]) -> None:
    gw, _ = gateway
    made = await gw.charge(charge_request(amount=1000))
    assert made.charge_id is not None
    key = uuid.uuid4().hex
    first = await gw.refund(made.charge_id, 600, f"rf-{key}-1")
    assert first.outcome == "succeeded" and first.refund_id
    replay = await gw.refund(made.charge_id, 600, f"rf-{key}-1")
    assert (replay.outcome, replay.refund_id) == ("succeeded", first.refund_id)
    too_much = await gw.refund(made.charge_id, 401, f"rf-{key}-2")
    assert too_much.outcome in ("error", "declined") and too_much.refund_id is None
    assert (await gw.refund(made.charge_id, 400, f"rf-{key}-3")).outcome == "succeeded"


async def test_balance_transactions_list_charges_with_fees_and_refunds(gateway: tuple[Gateway, Dialect]) -> None:
    gw, _ = gateway
    request = charge_request(amount=12_345)
    made = await gw.charge(request)
    assert made.charge_id is not None
    refunded = await gw.refund(made.charge_id, 345, f"rf-{uuid.uuid4().hex}")
    lines = await gw.balance_transactions()
    charge = [t for t in lines if t.type == "charge" and t.reference == request.attempt_id]
    assert len(charge) == 1
    assert charge[0].amount_minor == 12_345
    assert charge[0].net_minor == charge[0].amount_minor - charge[0].fee_minor > 0
    assert charge[0].currency == "USD"
    refunds = [t for t in lines if t.type == "refund" and t.source == refunded.refund_id]
    assert [t.amount_minor for t in refunds] == [-345]
    assert len({t.id for t in lines}) == len(lines), "pages overlap"


async def test_the_registry_builds_the_enabled_gateways_from_settings(base: str) -> None:
    settings = Settings(
        stripe_api_base=base, stripe_api_key="sk_test_fake", ledgerpay_api_base=base + "/ledgerpay",
        ledgerpay_api_key="sk_test_fake", gateway_timeout_s=5,
    )  # fmt: skip
    gateways = build_gateways(settings)
    try:
        assert sorted(gateways) == ["ledgerpay", "stripe"]
        for name, gw in gateways.items():
            assert gw.name == name
            assert (await gw.charge(charge_request())).outcome == "succeeded"
    finally:
        await gateways.close()
    with pytest.raises(ConfigurationError, match="SETTLE_STRIPE_API_KEY"):
        build_gateways(Settings(stripe_api_key=None), names=["stripe"])
    # enabled but without a key: left out (and logged), the others still built
    keyless = build_gateways(Settings(stripe_api_key=None, gateways_enabled="stripe,ledgerpay"))
    assert sorted(keyless) == ["ledgerpay"]
    await keyless.close()
    with pytest.raises(ConfigurationError, match="unknown gateway"):
        build_gateways(Settings(gateways_enabled="paypal"))
