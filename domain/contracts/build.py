"""Build and evolve :class:`ContractTerms` from the ``contracts.v1`` input events (R1, R4, R5, R9).

Pure functions: the input event's ``data`` in, a new frozen ``ContractTerms`` out; the store
persists the result. The pydantic input models are only read (attributes and ``model_fields_set``),
so this module imports them for type checking only and stays inside the pure-domain import rules.

Decisions (docs/billing-rules.md, the "Settle extensions" of the input contract, R4 and R9):

* An amendment that sets ``credit_limit`` to ``null`` *removes* the limit from ``effective_at``; an
  amendment that does not mention ``credit_limit`` leaves it as it was. The two are told apart by
  ``model_fields_set``. Every other priced field cannot be null, so ``null`` there means "not set".
* ``sla_tiers`` and ``meter_prices`` are replaced as a whole by an amendment that sets them (they are
  one priced field each, like every other field), never merged.
* An amendment with an ``event_id`` the terms already hold is a duplicate and changes nothing
  (the inbox dedups too; this keeps the pure function idempotent on its own).
* A credit limit applies to postpaid contracts only (R9): on a prepaid contract, a ``credit_limit`` in
  ``contract.created`` or in an amendment is ignored (the rest of the event applies). Until 2026-12-08 it
  refused the whole contract or amendment, so a prepaid contract sent with a limit billed nothing.
* A termination can only shorten the term (``ContractTerms.with_termination``); one effective
  before ``starts_at`` is clamped to ``starts_at`` (an empty term), so ``term_end >= starts_at``
  always holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING

from domain.contracts.terms import (
    ContractTerms,
    FieldChanges,
    PricedFields,
    SlaTierTerms,
    TermsVersion,
)
from libs.errors import DomainRuleError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from schemas.inputs import ContractAmended, ContractCreated, ContractTerminated, SlaTier

__all__ = ["amend_terms", "terminate_terms", "terms_from_created"]


def _sla_tiers(rows: Sequence[SlaTier]) -> tuple[SlaTierTerms, ...]:
    return tuple(SlaTierTerms(below_uptime=r.below_uptime, credit_percent=r.credit_percent) for r in rows)


def _meter_prices(prices: Mapping[str, Decimal]) -> Mapping[str, Decimal]:
    # A read-only copy: the terms are frozen and shared between handlers.
    return MappingProxyType(dict(prices))


def terms_from_created(event_id: str, data: ContractCreated) -> ContractTerms:
    """Version 1 of a contract's terms from its ``contract.created`` data.

    ``event_id`` is accepted for symmetry with :func:`amend_terms`; ``ContractTerms`` keeps no id for
    the creation (the store's inbox row is the audit trail of the creating event).
    """
    assert event_id, "the creating event needs an id"
    base = PricedFields(
        price_per_gpu_hour=data.price_per_gpu_hour,
        supplier_rate_per_gpu_hour=data.supplier_rate_per_gpu_hour,
        commitment_per_period=data.commitment_per_period,
        credit_limit=data.credit_limit if data.billing_mode == "postpaid" else None,  # R9: postpaid only
        sla_tiers=_sla_tiers(data.sla_tiers),
        tax_rate=data.tax_rate,
        meter_prices=_meter_prices(data.meter_prices),
    )
    terms = ContractTerms(
        contract_id=data.contract_id,
        renter_id=data.renter_id,
        currency=data.currency,
        billing_mode=data.billing_mode,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
        billing_anchor_day=data.billing_anchor_day,
        payment_terms_days=data.payment_terms_days,
        base=base,
    )
    assert terms.term_end is None or terms.term_end > terms.starts_at
    return terms


def _check_same_contract(terms: ContractTerms, contract_id: str) -> None:
    if contract_id != terms.contract_id:
        raise DomainRuleError(f"event for contract {contract_id!r} applied to the terms of {terms.contract_id!r}")


def amend_terms(terms: ContractTerms, event_id: str, data: ContractAmended) -> ContractTerms:
    """The terms with one more version: ``data``'s fields in force from ``data.effective_at`` (R4).

    The version number is ``terms.next_version`` (arrival order); which fields are in force at an
    instant does not depend on arrival order except between versions with the same
    ``effective_at``, where the later arrival wins (``ContractTerms.fields_at``).

    Raises DomainRuleError for another contract's event.
    """
    assert event_id, "an amendment needs an id"
    _check_same_contract(terms, data.contract_id)
    if any(v.event_id == event_id for v in terms.amendments):
        return terms
    # R9: a credit limit applies to postpaid contracts only; on a prepaid one it is ignored.
    credit_limit_set = "credit_limit" in data.model_fields_set and terms.billing_mode == "postpaid"
    changes = FieldChanges(
        price_per_gpu_hour=data.price_per_gpu_hour,
        supplier_rate_per_gpu_hour=data.supplier_rate_per_gpu_hour,
        commitment_per_period=data.commitment_per_period,
        credit_limit=data.credit_limit if credit_limit_set else None,
        credit_limit_set=credit_limit_set,
        sla_tiers=None if data.sla_tiers is None else _sla_tiers(data.sla_tiers),
        tax_rate=data.tax_rate,
        meter_prices=None if data.meter_prices is None else _meter_prices(data.meter_prices),
    )
    version = TermsVersion(
        version=terms.next_version,
        effective_at=data.effective_at,
        changes=changes,
        event_id=event_id,
    )
    amended = terms.with_amendment(version)
    assert amended.next_version == terms.next_version + 1
    return amended


def terminate_terms(terms: ContractTerms, data: ContractTerminated) -> ContractTerms:
    """The terms ended at ``data.effective_at`` unless they already end earlier (only shortens).

    Raises DomainRuleError for another contract's event.
    """
    _check_same_contract(terms, data.contract_id)
    effective_at = max(data.effective_at, terms.starts_at)
    terminated = terms.with_termination(effective_at)
    before, after = terms.term_end, terminated.term_end
    assert after is not None
    assert after >= terms.starts_at
    assert before is None or after <= before, "a termination never lengthens the term"
    return terminated
