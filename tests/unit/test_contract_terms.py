"""Contract terms and billing periods (R1, R4, R9): what is in force when, and which periods exist.

Expectations are computed here from the rules' own words (walk the calendar, fold the amendments
field by field), never copied from the implementation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.contracts.build import amend_terms, terminate_terms, terms_from_created
from domain.contracts.periods import last_second, period_containing, periods_overlapping
from domain.contracts.terms import ContractTerms, PricedFields
from libs.errors import DomainRuleError
from schemas.inputs import ContractAmended, ContractCreated, ContractTerminated


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def created(**overrides: Any) -> ContractCreated:
    data: dict[str, Any] = {
        "contract_id": "c-1",
        "renter_id": "r-1",
        "currency": "USD",
        "billing_mode": "postpaid",
        "price_per_gpu_hour": "2.00",
        "supplier_rate_per_gpu_hour": "1.40",
        "commitment_per_period": "0",
        "credit_limit": "5000",
        "sla_tiers": [{"below_uptime": "0.999", "credit_percent": "10"}],
        "tax_rate": "0.20",
        "starts_at": "2026-03-10T12:00:00Z",
        "ends_at": None,
        "billing_anchor_day": 15,
        "meter_prices": {"egress_gb": "0.08"},
    }
    data.update(overrides)
    return ContractCreated.model_validate(data)


def amended(effective_at: str, **fields: Any) -> ContractAmended:
    return ContractAmended.model_validate({"contract_id": "c-1", "effective_at": effective_at, **fields})


def terminated(effective_at: str) -> ContractTerminated:
    return ContractTerminated.model_validate({"contract_id": "c-1", "effective_at": effective_at})


# --- R1: periods -----------------------------------------------------------------------------------


def brute_force_period(anchor_day: int, instant: datetime) -> tuple[datetime, datetime]:
    """Walk every anchor boundary of the surrounding years; the period is [last ≤ t, next)."""
    boundaries = [
        datetime(year, month, anchor_day, tzinfo=UTC)
        for year in range(instant.year - 1, instant.year + 2)
        for month in range(1, 13)
    ]
    start = max(b for b in boundaries if b <= instant)
    end = min(b for b in boundaries if b > instant)
    return start, end


@pytest.mark.parametrize(
    ("anchor_day", "instant", "expected"),
    [
        # Anchor on the 15th: the 10th of March is in the period that started on the 15th of February.
        (15, "2026-03-10T12:00:00", ("2026-02-15T00:00:00", "2026-03-15T00:00:00")),
        # Exactly at the anchor's midnight a new period starts.
        (15, "2026-03-15T00:00:00", ("2026-03-15T00:00:00", "2026-04-15T00:00:00")),
        # One second before it still belongs to the previous one.
        (15, "2026-03-14T23:59:59", ("2026-02-15T00:00:00", "2026-03-15T00:00:00")),
        # Calendar months with anchor 1.
        (1, "2026-02-28T23:00:00", ("2026-02-01T00:00:00", "2026-03-01T00:00:00")),
        # Across the year end.
        (20, "2026-01-05T08:00:00", ("2025-12-20T00:00:00", "2026-01-20T00:00:00")),
        # Anchor 28 is valid in February too.
        (28, "2026-02-28T00:00:00", ("2026-02-28T00:00:00", "2026-03-28T00:00:00")),
    ],
)
def test_a_period_runs_from_the_anchor_day_to_the_same_day_next_month(
    anchor_day: int, instant: str, expected: tuple[str, str]
) -> None:
    assert period_containing(anchor_day, at(instant)) == (at(expected[0]), at(expected[1]))


instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=0)
)


@given(anchor_day=st.integers(1, 28), instant=instants)
def test_period_containing_matches_a_calendar_walk(anchor_day: int, instant: datetime) -> None:
    assert period_containing(anchor_day, instant) == brute_force_period(anchor_day, instant)


@given(
    anchor_day=st.integers(1, 28),
    starts_at=instants,
    term_days=st.one_of(st.none(), st.integers(0, 400)),
    until_days=st.integers(0, 500),
)
@settings(max_examples=150)
def test_every_period_overlapping_the_term_is_listed_first_one_on_or_before_the_start(
    anchor_day: int, starts_at: datetime, term_days: int | None, until_days: int
) -> None:
    term_end = None if term_days is None else starts_at + timedelta(days=term_days)
    until = starts_at + timedelta(days=until_days)
    periods = periods_overlapping(anchor_day, starts_at, term_end, until)

    # Independently: walk the periods from the one containing starts_at and keep those that
    # overlap [starts_at, term_end) (none when the term is empty) and have ended by `until`.
    expected = []
    start, end = brute_force_period(anchor_day, starts_at)
    assert start <= starts_at  # R1: the first period starts on or before starts_at
    while end <= until:
        if max(start, starts_at) < min(end, term_end or end):
            expected.append((start, end))
        start, end = brute_force_period(anchor_day, end)
    assert periods == expected
    for (_, end_a), (start_b, _) in pairwise(periods):
        assert end_a == start_b  # contiguous, no gap, no overlap
    if periods and term_end is not None:
        # The last period keeps its normal end even if the term ends inside it.
        assert periods[-1][1] == brute_force_period(anchor_day, periods[-1][0])[1]


def test_a_term_emptied_by_a_termination_before_its_start_has_no_period() -> None:
    terms = terminate_terms(terms_from_created("e-1", created()), terminated("2026-01-01T00:00:00Z"))
    assert periods_overlapping(1, terms.starts_at, terms.term_end, at("2027-01-01T00:00:00")) == []


def test_a_term_ending_mid_period_still_gets_that_whole_period() -> None:
    periods = periods_overlapping(15, at("2026-03-10T12:00:00"), at("2026-04-02T00:00:00"), at("2026-06-01T00:00:00"))
    assert periods == [
        (at("2026-02-15T00:00:00"), at("2026-03-15T00:00:00")),
        (at("2026-03-15T00:00:00"), at("2026-04-15T00:00:00")),
    ]


def test_at_the_period_end_means_its_last_second() -> None:
    assert last_second(at("2026-04-15T00:00:00")) == at("2026-04-14T23:59:59")


# --- building terms from contract.created ----------------------------------------------------------


def test_terms_from_created_carry_every_priced_field() -> None:
    terms = terms_from_created("e-1", created())
    assert terms.contract_id == "c-1"
    assert terms.currency == "USD"
    assert terms.billing_mode == "postpaid"
    assert terms.starts_at == at("2026-03-10T12:00:00")
    assert terms.term_end is None
    assert terms.billing_anchor_day == 15
    assert terms.payment_terms_days == 30  # the documented default
    fields = terms.fields_at(at("2026-03-10T12:00:00"))
    assert fields.price_per_gpu_hour == Decimal("2.00")
    assert fields.supplier_rate_per_gpu_hour == Decimal("1.40")
    assert fields.credit_limit == Decimal("5000")
    assert fields.tax_rate == Decimal("0.20")
    assert [(t.below_uptime, t.credit_percent) for t in fields.sla_tiers] == [(Decimal("0.999"), Decimal("10"))]
    assert dict(fields.meter_prices) == {"egress_gb": Decimal("0.08")}
    assert terms.version_at(at("2030-01-01T00:00:00")) == 1
    assert terms.next_version == 2


# --- amendments ------------------------------------------------------------------------------------

FIELD_NAMES = ("price_per_gpu_hour", "supplier_rate_per_gpu_hour", "commitment_per_period", "tax_rate")
money = st.integers(0, 10_000).map(lambda cents: f"{cents // 100}.{cents % 100:02d}")
rates = st.integers(0, 100).map(lambda pct: f"0.{pct:02d}" if pct < 100 else "1")


@st.composite
def amendment_sets(draw: st.DrawFn) -> list[tuple[str, datetime, dict[str, str]]]:
    """Amendments with distinct effective times, each setting a random non-empty subset of fields."""
    offsets_s = draw(st.lists(st.integers(-86_400, 90 * 86_400), min_size=1, max_size=6, unique=True))
    result = []
    for index, offset_s in enumerate(offsets_s):
        names = draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=1, unique=True))
        values = {name: draw(rates if name == "tax_rate" else money) for name in names}
        result.append((f"e-{index + 2}", at("2026-03-10T12:00:00") + timedelta(seconds=offset_s), values))
    return result


def expected_field(
    base: ContractCreated,
    amendments: list[tuple[str, datetime, dict[str, str]]],
    name: str,
    instant: datetime,
) -> Decimal:
    """R4 in words: the value set by the latest effective_at not after the instant, else the creation's."""
    setting = [(eff, Decimal(vals[name])) for _, eff, vals in amendments if name in vals and eff <= instant]
    return max(setting)[1] if setting else Decimal(getattr(base, name))


@given(amendments=amendment_sets(), data=st.data())
@settings(max_examples=120)
def test_amendments_arriving_out_of_order_give_the_same_fields_at_every_instant(
    amendments: list[tuple[str, datetime, dict[str, str]]], data: st.DataObject
) -> None:
    base = created()
    arrival = data.draw(st.permutations(amendments))

    def build(order: list[tuple[str, datetime, dict[str, str]]]) -> ContractTerms:
        terms = terms_from_created("e-1", base)
        for event_id, effective_at, values in order:
            terms = amend_terms(terms, event_id, amended(effective_at.isoformat(), **values))
        return terms

    in_order, out_of_order = build(sorted(amendments, key=lambda a: a[1])), build(list(arrival))
    probes = {base.starts_at, base.starts_at + timedelta(days=200)}
    for _, effective_at, _ in amendments:
        probes |= {effective_at - timedelta(seconds=1), effective_at, effective_at + timedelta(seconds=1)}
    for instant in probes:
        assert in_order.fields_at(instant) == out_of_order.fields_at(instant)
        fields = out_of_order.fields_at(instant)
        for name in FIELD_NAMES:
            assert getattr(fields, name) == expected_field(base, amendments, name, instant), (name, instant)


def test_version_numbers_count_arrivals() -> None:
    terms = terms_from_created("e-1", created())
    terms = amend_terms(terms, "e-2", amended("2026-05-01T00:00:00Z", price_per_gpu_hour="3.00"))
    terms = amend_terms(terms, "e-3", amended("2026-04-01T00:00:00Z", price_per_gpu_hour="2.50"))
    assert terms.version_at(at("2026-03-31T23:59:59")) == 1
    assert terms.version_at(at("2026-04-01T00:00:00")) == 3
    assert terms.version_at(at("2026-05-01T00:00:00")) == 2
    assert terms.next_version == 4


def test_two_amendments_effective_at_the_same_instant_the_later_arrival_wins() -> None:
    terms = terms_from_created("e-1", created())
    terms = amend_terms(terms, "e-2", amended("2026-04-01T00:00:00Z", price_per_gpu_hour="3.00"))
    terms = amend_terms(terms, "e-3", amended("2026-04-01T00:00:00Z", price_per_gpu_hour="2.50"))
    assert terms.fields_at(at("2026-04-01T00:00:00")).price_per_gpu_hour == Decimal("2.50")


def test_an_amendment_keeps_the_fields_it_does_not_mention() -> None:
    terms = amend_terms(
        terms_from_created("e-1", created()),
        "e-2",
        amended("2026-04-01T00:00:00Z", price_per_gpu_hour="3.00"),
    )
    before, after = terms.fields_at(at("2026-03-31T23:59:59")), terms.fields_at(at("2026-04-01T00:00:00"))
    assert after.price_per_gpu_hour == Decimal("3.00")
    assert before.price_per_gpu_hour == Decimal("2.00")
    assert after.supplier_rate_per_gpu_hour == before.supplier_rate_per_gpu_hour
    assert after.credit_limit == Decimal("5000")
    assert after.meter_prices == before.meter_prices


def test_credit_limit_explicitly_null_removes_the_limit_but_absent_keeps_it() -> None:
    terms = terms_from_created("e-1", created())
    # The schema refuses an amendment with no non-null field, so the removal rides with a tax change.
    terms = amend_terms(terms, "e-2", amended("2026-04-01T00:00:00Z", tax_rate="0.21", credit_limit=None))
    terms = amend_terms(terms, "e-3", amended("2026-05-01T00:00:00Z", tax_rate="0.22"))
    assert terms.fields_at(at("2026-03-31T00:00:00")).credit_limit == Decimal("5000")
    assert terms.fields_at(at("2026-04-01T00:00:00")).credit_limit is None
    assert terms.fields_at(at("2026-05-01T00:00:00")).credit_limit is None  # absent: still removed
    terms = amend_terms(terms, "e-4", amended("2026-06-01T00:00:00Z", credit_limit="100"))
    assert terms.fields_at(at("2026-06-01T00:00:00")).credit_limit == Decimal("100")


def test_meter_prices_and_sla_tiers_are_replaced_as_a_whole() -> None:
    terms = amend_terms(
        terms_from_created("e-1", created()),
        "e-2",
        amended(
            "2026-04-01T00:00:00Z",
            meter_prices={"storage_gb_hours": "0.01"},
            sla_tiers=[{"below_uptime": "0.99", "credit_percent": "25"}],
        ),
    )
    fields = terms.fields_at(at("2026-04-01T00:00:00"))
    assert dict(fields.meter_prices) == {"storage_gb_hours": Decimal("0.01")}
    assert [(t.below_uptime, t.credit_percent) for t in fields.sla_tiers] == [(Decimal("0.99"), Decimal("25"))]


def test_a_duplicate_amendment_changes_nothing() -> None:
    once = amend_terms(
        terms_from_created("e-1", created()),
        "e-2",
        amended("2026-04-01T00:00:00Z", price_per_gpu_hour="3.00"),
    )
    assert amend_terms(once, "e-2", amended("2026-04-01T00:00:00Z", price_per_gpu_hour="3.00")) == once


def test_a_credit_limit_on_a_prepaid_contract_is_ignored_and_the_rest_applies() -> None:
    """R9 applies to postpaid contracts only: a prepaid contract sent with a limit is billed as prepaid with
    no limit (until 2026-12-08 the whole contract, or the whole amendment, was refused)."""
    terms = terms_from_created("e-1", created(billing_mode="prepaid", credit_limit="500"))
    assert terms.billing_mode == "prepaid" and terms.fields_at(terms.starts_at).credit_limit is None
    at = datetime(2026, 4, 1, tzinfo=UTC)
    amended_terms = amend_terms(terms, "e-2", amended("2026-04-01T00:00:00Z", credit_limit="100", tax_rate="0.1"))
    assert amended_terms.fields_at(at).credit_limit is None
    assert amended_terms.fields_at(at).tax_rate == Decimal("0.1")
    postpaid = terms_from_created("e-1", created(billing_mode="postpaid", credit_limit="500"))
    assert postpaid.fields_at(postpaid.starts_at).credit_limit == Decimal("500")


def test_events_of_another_contract_are_refused() -> None:
    terms = terms_from_created("e-1", created())
    other = ContractAmended.model_validate(
        {"contract_id": "c-2", "effective_at": "2026-04-01T00:00:00Z", "tax_rate": "0.1"}
    )
    with pytest.raises(DomainRuleError):
        amend_terms(terms, "e-2", other)
    with pytest.raises(DomainRuleError):
        terminate_terms(
            terms,
            ContractTerminated.model_validate({"contract_id": "c-2", "effective_at": "2026-04-01T00:00:00Z"}),
        )


@given(amendments=amendment_sets())
@settings(max_examples=50)
def test_constant_pieces_cut_exactly_where_some_version_takes_effect(
    amendments: list[tuple[str, datetime, dict[str, str]]],
) -> None:
    terms = terms_from_created("e-1", created())
    for event_id, effective_at, values in amendments:
        terms = amend_terms(terms, event_id, amended(effective_at.isoformat(), **values))
    start, end = at("2026-03-10T12:00:00"), at("2026-06-10T12:00:00")
    pieces = terms.constant_pieces(start, end)
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    cuts = sorted({eff for _, eff, _ in amendments if start < eff < end})
    assert [p[0] for p in pieces[1:]] == cuts
    for piece_start, piece_end, fields, _ in pieces:
        assert piece_start < piece_end
        assert terms.fields_at(piece_end - timedelta(seconds=1)) == fields


# --- termination -----------------------------------------------------------------------------------


def test_termination_before_the_end_of_term_shortens_it() -> None:
    terms = terms_from_created("e-1", created(ends_at="2026-12-01T00:00:00Z"))
    assert terminate_terms(terms, terminated("2026-06-01T00:00:00Z")).term_end == at("2026-06-01T00:00:00")


def test_termination_after_the_end_of_term_changes_nothing() -> None:
    terms = terms_from_created("e-1", created(ends_at="2026-12-01T00:00:00Z"))
    assert terminate_terms(terms, terminated("2027-03-01T00:00:00Z")).term_end == at("2026-12-01T00:00:00")


@given(offsets_days=st.lists(st.integers(1, 400), min_size=1, max_size=5), data=st.data())
def test_terminations_in_any_order_end_the_term_at_the_earliest(offsets_days: list[int], data: st.DataObject) -> None:
    terms = terms_from_created("e-1", created(ends_at="2026-12-01T00:00:00Z"))
    starts_at = terms.starts_at
    for days in data.draw(st.permutations(offsets_days)):
        before = terms.term_end
        terms = terminate_terms(terms, terminated((starts_at + timedelta(days=days)).isoformat()))
        assert before is not None
        assert terms.term_end is not None
        assert terms.term_end <= before  # only ever shortens
    assert terms.term_end == min([at("2026-12-01T00:00:00"), *(starts_at + timedelta(days=d) for d in offsets_days)])


def test_termination_before_the_start_leaves_an_empty_term() -> None:
    terms = terminate_terms(terms_from_created("e-1", created()), terminated("2026-01-01T00:00:00Z"))
    assert terms.term_end == terms.starts_at
    assert not terms.in_term(terms.starts_at)


def test_only_seconds_inside_the_term_are_in_term() -> None:
    terms = terminate_terms(terms_from_created("e-1", created()), terminated("2026-04-01T00:00:00Z"))
    assert not terms.in_term(at("2026-03-10T11:59:59"))
    assert terms.in_term(at("2026-03-10T12:00:00"))
    assert terms.in_term(at("2026-03-31T23:59:59"))
    assert not terms.in_term(at("2026-04-01T00:00:00"))


def test_priced_fields_are_frozen() -> None:
    fields = terms_from_created("e-1", created()).base
    assert isinstance(fields, PricedFields)
    with pytest.raises(AttributeError):
        fields.price_per_gpu_hour = Decimal("1")  # type: ignore[misc]
