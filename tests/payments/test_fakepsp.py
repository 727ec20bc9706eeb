"""fakepsp over HTTP, as a separate process: idempotency, scripted tokens, refunds, disputes, balance
transactions and fees, outages, payouts, a restart with a state file, and signed, messy webhooks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe

from tests.payments.processes import admin, eventually, fakepsp, receiver

SECRET = "whsec_test_secret"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with fakepsp("--slow-ms", "300", "--hang-ms", "1500", "--ledgerpay-latency-ms", "20") as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def create(
    http: aiohttp.ClientSession,
    base: str,
    *,
    key: str | None,
    token: str = "tok_visa",
    amount: int = 1000,
    attempt: str = "att-1",
    invoice: str = "INV-1",
    timeout_s: float = 10,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    form = {
        "amount": str(amount),
        "currency": "usd",
        "payment_method": token,
        "confirm": "true",
        "metadata[attempt_id]": attempt,
        "metadata[invoice_number]": invoice,
    }
    headers = {"Idempotency-Key": key} if key else {}
    async with http.post(
        f"{base}/v1/payment_intents", data=form, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as response:
        return response.status, await response.json(), dict(response.headers)


async def stats(base: str) -> dict[str, Any]:
    result: dict[str, Any] = await admin(base, "GET", "/_admin/stats")
    return result


async def test_a_replayed_key_returns_the_first_result_and_charges_once(http: aiohttp.ClientSession, base: str) -> None:
    status, first, _ = await create(http, base, key="idem-replay", attempt="att-replay")
    assert status == 200 and first["status"] == "succeeded"
    status, again, headers = await create(http, base, key="idem-replay", attempt="att-replay")
    assert status == 200 and again == first
    assert headers.get("Idempotent-Replayed") == "true"
    counted = await stats(base)
    assert counted["charges_by_attempt"]["att-replay"] == 1
    assert counted["charges_by_key"]["idem-replay"] == 1


async def test_the_same_key_with_other_parameters_is_an_idempotency_error(
    http: aiohttp.ClientSession, base: str
) -> None:
    await create(http, base, key="idem-mismatch", attempt="att-mm")
    status, body, _ = await create(http, base, key="idem-mismatch", attempt="att-mm", amount=2000)
    assert status == 400
    assert body["error"]["type"] == "idempotency_error"
    assert (await stats(base))["charges_by_attempt"]["att-mm"] == 1


@pytest.mark.parametrize(
    ("token", "status", "code", "decline_code"),
    [
        ("tok_insufficient_funds", 402, "card_declined", "insufficient_funds"),
        ("tok_do_not_honor", 402, "card_declined", "do_not_honor"),
        ("tok_stolen", 402, "card_declined", "stolen_card"),
        ("tok_expired", 402, "expired_card", "expired_card"),
    ],
)
async def test_declining_tokens_answer_card_errors_and_charge_nothing(
    http: aiohttp.ClientSession, base: str, token: str, status: int, code: str, decline_code: str
) -> None:
    answered, body, _ = await create(http, base, key=f"k-{token}", token=token, attempt=f"a-{token}")
    assert answered == status
    assert body["error"]["type"] == "card_error"
    assert (body["error"]["code"], body["error"]["decline_code"]) == (code, decline_code)
    assert body["error"]["payment_intent"]["status"] == "requires_payment_method"
    assert f"a-{token}" not in (await stats(base))["charges_by_attempt"]


async def test_tok_500_fails_before_charging_and_is_not_stored_under_the_key(
    http: aiohttp.ClientSession, base: str
) -> None:
    status, body, _ = await create(http, base, key="k-500", token="tok_500", attempt="a-500")
    assert status == 500 and body["error"]["type"] == "api_error"
    status, _, headers = await create(http, base, key="k-500", token="tok_500", attempt="a-500")
    assert status == 500 and "Idempotent-Replayed" not in headers  # executed again, not replayed
    assert "a-500" not in (await stats(base))["charges_by_attempt"]


async def test_timeout_after_charge_charges_then_answers_too_late(http: aiohttp.ClientSession, base: str) -> None:
    with pytest.raises(TimeoutError):
        await create(http, base, key="k-late", token="tok_timeout_after_charge", attempt="a-late", timeout_s=0.5)
    assert (await stats(base))["charges_by_attempt"]["a-late"] == 1  # the money moved
    status, body, headers = await create(http, base, key="k-late", token="tok_timeout_after_charge", attempt="a-late")
    assert status == 200 and body["status"] == "succeeded" and headers.get("Idempotent-Replayed") == "true"
    assert (await stats(base))["charges_by_attempt"]["a-late"] == 1


async def test_drop_after_charge_closes_the_connection_after_charging(http: aiohttp.ClientSession, base: str) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await create(http, base, key="k-drop", token="tok_drop_after_charge", attempt="a-drop")
    assert (await stats(base))["charges_by_attempt"]["a-drop"] == 1


async def test_tok_slow_succeeds_late(http: aiohttp.ClientSession, base: str) -> None:
    with pytest.raises(TimeoutError):
        await create(http, base, key="k-slow-1", token="tok_slow", attempt="a-slow-1", timeout_s=0.1)
    status, body, _ = await create(http, base, key="k-slow-2", token="tok_slow", attempt="a-slow-2", timeout_s=5)
    assert status == 200 and body["status"] == "succeeded"


async def test_chain_500_then_ok_fails_once_then_succeeds_with_the_same_key(
    http: aiohttp.ClientSession, base: str
) -> None:
    first, _, _ = await create(http, base, key="k-chain", token="tok_chain_500_then_ok", invoice="INV-chain-500")
    second, body, _ = await create(http, base, key="k-chain", token="tok_chain_500_then_ok", invoice="INV-chain-500")
    assert (first, second) == (500, 200)
    assert body["status"] == "succeeded"


async def test_chain_soft_soft_ok_declines_two_keys_and_takes_the_third(http: aiohttp.ClientSession, base: str) -> None:
    token, invoice = "tok_chain_soft_soft_ok", "INV-chain-soft"
    statuses = []
    for n in (1, 1, 2, 3, 3):  # key 1 twice: a replay does not advance the chain
        status, _, _ = await create(http, base, key=f"k-soft-{n}", token=token, invoice=invoice, attempt=f"a-soft-{n}")
        statuses.append(status)
    assert statuses == [402, 402, 402, 200, 200]
    counted = await stats(base)
    assert counted["charges_by_attempt"]["a-soft-3"] == 1
    assert "a-soft-1" not in counted["charges_by_attempt"]


async def test_unknown_token_and_bad_amount_are_invalid_requests(http: aiohttp.ClientSession, base: str) -> None:
    status, body, _ = await create(http, base, key="k-unknown", token="tok_nonsense")
    assert status == 400 and body["error"]["code"] == "resource_missing"
    status, body, _ = await create(http, base, key="k-zero", amount=0)
    assert status == 400 and body["error"]["param"] == "amount"


async def test_search_finds_an_intent_by_attempt_id_and_nothing_for_another(
    http: aiohttp.ClientSession, base: str
) -> None:
    _, made, _ = await create(http, base, key="k-search", attempt="att-search")
    async with http.get(
        f"{base}/v1/payment_intents/search", params={"query": "metadata['attempt_id']:'att-search'"}
    ) as r:
        found = await r.json()
    assert [i["id"] for i in found["data"]] == [made["id"]]
    async with http.get(f"{base}/v1/payment_intents/search", params={"query": "metadata['attempt_id']:'never'"}) as r:
        assert (await r.json())["data"] == []
    async with http.get(f"{base}/v1/payment_intents/{made['id']}") as r:
        assert (await r.json())["amount"] == 1000


async def test_refunds_never_exceed_the_charge(http: aiohttp.ClientSession, base: str) -> None:
    _, made, _ = await create(http, base, key="k-refund", attempt="att-refund", amount=5000)

    async def refund(amount: int, key: str) -> tuple[int, dict[str, Any]]:
        form = {"payment_intent": made["id"], "amount": str(amount)}
        async with http.post(f"{base}/v1/refunds", data=form, headers={"Idempotency-Key": key}) as r:
            return r.status, await r.json()

    assert (await refund(3000, "rf-1"))[0] == 200
    assert (await refund(3000, "rf-1"))[0] == 200  # a replay, not a second refund
    status, body = await refund(2001, "rf-2")
    assert status == 400 and body["error"]["code"] == "amount_too_large"
    assert (await refund(2000, "rf-3"))[0] == 200
    status, body = await refund(1, "rf-4")
    assert status == 400 and body["error"]["code"] == "charge_already_refunded"
    lines = await balance(http, base, type="refund", **{"expand[]": "data.source"})
    mine = [t for t in lines if t["source"]["payment_intent"] == made["id"]]
    assert sorted(t["amount"] for t in mine) == [-3000, -2000]
    assert all(t["fee"] == 0 for t in mine)


async def balance(http: aiohttp.ClientSession, base: str, **query: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params = {"limit": "3", **query}
    while True:
        async with http.get(f"{base}/v1/balance_transactions", params=params) as r:
            page = await r.json()
        rows.extend(page["data"])
        if not page["has_more"]:
            return rows
        params["starting_after"] = page["data"][-1]["id"]


async def test_balance_transactions_carry_integer_fees_and_page_with_starting_after(
    http: aiohttp.ClientSession, base: str
) -> None:
    amounts = [1000, 1234, 99_999, 50]
    made = []
    for n, amount in enumerate(amounts):
        _, body, _ = await create(http, base, key=f"k-fee-{n}", attempt=f"a-fee-{n}", amount=amount)
        made.append(body["latest_charge"])
    lines = {t["source"]: t for t in await balance(http, base, type="charge")}
    for charge_id, amount in zip(made, amounts, strict=True):
        line = lines[charge_id]
        expected_fee = (amount * 29 + 500) // 1000 + 30  # 2.9 % (half up) + 30 minor units
        assert (line["amount"], line["fee"], line["net"]) == (amount, expected_fee, amount - expected_fee)
    assert lines[made[0]]["fee"] == 59 and lines[made[2]]["fee"] == 2930
    ids = [t["id"] for t in await balance(http, base)]
    assert len(ids) == len(set(ids)), "pages overlap"


async def test_a_dispute_lost_and_one_won_show_in_the_balance(http: aiohttp.ClientSession, base: str) -> None:
    _, lost, _ = await create(http, base, key="k-dp-1", attempt="a-dp-1", amount=4000)
    _, won, _ = await create(http, base, key="k-dp-2", attempt="a-dp-2", amount=3000)
    d1 = await admin(base, "POST", "/_admin/disputes", {"charge": lost["id"], "reason": "fraudulent"})
    d2 = await admin(base, "POST", "/_admin/disputes", {"charge": won["latest_charge"]})
    assert d1["status"] == "needs_response" and d1["amount"] == 4000
    assert (await admin(base, "POST", f"/_admin/disputes/{d1['id']}/close", {"status": "lost"}))["status"] == "lost"
    assert (await admin(base, "POST", f"/_admin/disputes/{d2['id']}/close", {"status": "won"}))["status"] == "won"
    again = await admin(base, "POST", f"/_admin/disputes/{d2['id']}/close", {"status": "lost"})
    assert again["error"] == "dispute_closed"
    lines = await balance(http, base)
    by_type = {(t["type"], t["source"]): t for t in lines}
    assert by_type[("dispute", d1["id"])]["amount"] == -4000 and by_type[("dispute", d1["id"])]["fee"] == 1500
    assert ("dispute_reversal", d1["id"]) not in by_type
    assert by_type[("dispute_reversal", d2["id"])]["amount"] == 3000
    form = {"payment_intent": lost["id"], "amount": "1"}
    async with http.post(f"{base}/v1/refunds", data=form, headers={"Idempotency-Key": "rf-dp"}) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "charge_disputed"


async def test_outage_answers_503_to_both_dialects_and_charges_nothing(http: aiohttp.ClientSession, base: str) -> None:
    await admin(base, "POST", "/_admin/outage", {"on": True})
    try:
        status, body, _ = await create(http, base, key="k-outage", attempt="a-outage")
        assert status == 503 and body["error"]["type"] == "api_error"
        async with http.post(f"{base}/ledgerpay/v1/charges", json={}, headers={"X-Request-Id": "x"}) as r:
            assert r.status == 503 and (await r.json())["error_code"] == "UNAVAILABLE"
    finally:
        await admin(base, "POST", "/_admin/outage", {"on": False})
    assert "a-outage" not in (await stats(base))["charges_by_attempt"]
    status, _, _ = await create(http, base, key="k-outage", attempt="a-outage")
    assert status == 200


async def test_ledgerpay_codes_replay_and_request_id_reuse(http: aiohttp.ClientSession, base: str) -> None:
    async def charge(
        token: str, key: str, value: int = 700, reference: str = "lp-a"
    ) -> tuple[int, dict[str, Any], Any]:
        body = {
            "reference": reference,
            "amount": {"value": value, "currency": "EUR"},
            "token": token,
            "invoice": "I-lp",
        }
        async with http.post(f"{base}/ledgerpay/v1/charges", json=body, headers={"X-Request-Id": key}) as r:
            return r.status, await r.json(), r.headers.get("X-Replayed")

    status, ok, _ = await charge("tok_visa", "lp-1")
    assert (status, ok["result"], ok["fee"]["value"]) == (201, "APPROVED", (700 * 25 + 500) // 1000 + 25)
    assert (await charge("tok_visa", "lp-1"))[1:] == (ok, "true")
    status, reused, _ = await charge("tok_visa", "lp-1", value=701)
    assert (status, reused["error_code"]) == (422, "REQUEST_ID_REUSED")
    for token, code in [
        ("tok_insufficient_funds", "51"),
        ("tok_do_not_honor", "05"),
        ("tok_stolen", "43"),
        ("tok_expired", "54"),
    ]:
        status, refused, _ = await charge(token, f"lp-{token}", reference=f"lp-{token}")
        assert (status, refused["result"], refused["reason_code"]) == (200, "REFUSED", code)
    status, error, _ = await charge("tok_500", "lp-500", reference="lp-500")
    assert (status, error["result"]) == (200, "ERROR")
    async with http.get(f"{base}/ledgerpay/v1/charges", params={"reference": "lp-a"}) as r:
        assert [c["id"] for c in (await r.json())["charges"]] == [ok["id"]]


async def test_payout_pays_the_unpaid_balance_and_reports_it(http: aiohttp.ClientSession, base: str) -> None:
    _, made, _ = await create(http, base, key="k-po", attempt="a-po", amount=10_000)
    payout = await admin(base, "POST", "/_admin/payouts", {"dialect": "stripe", "currency": "USD"})
    report = await admin(base, "GET", f"/_admin/reports/payouts/{payout['id']}")
    assert report["net"] == payout["amount"] == report["gross"] - report["fees"]
    assert made["latest_charge"] in {line["source"] for line in report["lines"]}
    again = await admin(base, "POST", "/_admin/payouts", {"dialect": "stripe", "currency": "USD"})
    assert again["payout"] is None  # nothing left unpaid
    lines = await balance(http, base, payout=payout["id"])
    assert sum(t["net"] for t in lines if t["type"] != "payout") == payout["amount"]


async def test_a_restarted_fakepsp_keeps_its_charges_with_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "fakepsp.json"
    async with aiohttp.ClientSession() as http:
        with fakepsp("--state-file", str(state)) as url:
            _, first, _ = await create(http, url, key="k-persist", attempt="a-persist")
        with fakepsp("--state-file", str(state)) as url:
            status, again, headers = await create(http, url, key="k-persist", attempt="a-persist")
            assert (await stats(url))["charges_by_attempt"] == {"a-persist": 1}
    assert status == 200 and again == first and headers.get("Idempotent-Replayed") == "true"


# --- webhooks -------------------------------------------------------------------------------------------------


def verified(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    stripe.WebhookSignature.verify_header(body.decode(), headers["Stripe-Signature"], SECRET, tolerance=300)
    event: dict[str, Any] = json.loads(body)
    return event


async def test_webhooks_are_signed_late_duplicated_out_of_order_and_retried() -> None:
    async with receiver(fail_first=2) as hook, aiohttp.ClientSession() as http:
        args = ("--webhook-url", hook.url, "--webhook-secret", SECRET, "--seed", "7",
                "--webhook-delay-min-ms", "0", "--webhook-delay-max-ms", "1500",
                "--webhook-duplicate-per-mille", "1000")  # fmt: skip
        with fakepsp(*args) as url:
            made = [(await create(http, url, key=f"k-wh-{n}", attempt=f"a-wh-{n}"))[1]["id"] for n in range(8)]
            await create(http, url, key="k-wh-d", token="tok_insufficient_funds", attempt="a-wh-d")
            events = (await admin(url, "GET", "/_admin/events"))["data"]

            async def all_twice() -> bool:
                return len(hook.received) >= 2 * len(events)

            await eventually(all_twice, timeout_s=30, what="every event delivered twice")
            log = (await admin(url, "GET", "/_admin/webhooks"))["log"]
    got = [verified(headers, body) for headers, body in hook.received]  # every delivery carries a valid signature
    assert sorted(e["id"] for e in got) == sorted(e["id"] for e in events for _ in range(2))
    succeeded = [e["data"]["object"]["id"] for e in got if e["type"] == "payment_intent.succeeded"]
    first_seen = list(dict.fromkeys(succeeded))
    assert sorted(first_seen) == sorted(made)
    assert first_seen != made, "seed 7 delivers out of creation order"
    assert any(e["type"] == "payment_intent.payment_failed" for e in got)
    failed = [entry for entry in log if entry.get("status") == 500]
    assert len(failed) == 2 and all(any(e["event_id"] == f["event_id"] and e["attempt"] > 1 and e.get("status") == 200
                                        for e in log) for f in failed)  # fmt: skip
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(hook.received[0][1].decode(), hook.received[0][0]["Stripe-Signature"],
                                              "whsec_other", tolerance=300)  # fmt: skip


async def test_the_same_seed_plans_the_same_deliveries() -> None:
    plans = []
    async with receiver() as hook, aiohttp.ClientSession() as http:
        for _ in range(2):
            with fakepsp("--webhook-url", hook.url, "--seed", "42", "--webhook-delay-max-ms", "50") as url:
                for n in range(6):
                    await create(http, url, key=f"k-seed-{n}", attempt=f"a-seed-{n}")
                plans.append((await admin(url, "GET", "/_admin/webhooks"))["planned"])
    assert plans[0] == plans[1]
    assert len(plans[0]) >= 6
