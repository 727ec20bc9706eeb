"""Field types shared by every event model: strict on what we own, explicit about units.

* ``DecimalStr`` — a decimal that must arrive as a JSON *string* (never a JSON number, so no float
  ever carries an amount), parsed to :class:`decimal.Decimal`, serialized back as a string.
* ``UtcTime`` — RFC 3339, must be UTC; sub-second parts are floored to the second because billing
  resolution is one second (docs/billing-rules.md, "Input contract").
* ``Id`` — a non-empty identifier of bounded length, printable, no whitespace.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import iso4217
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

from libs import limits
from libs.errors import UnknownCurrencyError
from libs.money import check_decimal, currency_exponent
from libs.times import RFC3339_UTC_PATTERN, format_utc, parse_utc

# JSON Schema patterns say what the validators below accept, so that the generated schemas refuse
# what the models refuse (field by field; cross-field rules live in the models only).
_DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?$"
_NON_NEGATIVE_DECIMAL_PATTERN = r"^(-?0(\.0{1,12})?|(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?)$"
_POSITIVE_DECIMAL_PATTERN = r"^(?=[0-9.]*[1-9])(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?$"


def _decimal_from_str(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        # Built in Python (an event we emit): hold it to the wire's rules, so that what we emit
        # our consumers can read (no NaN, no 1E+30, at most 12 places).
        check_decimal(format(value, "f"))
        return value
    if not isinstance(value, str):
        raise ValueError('decimals are JSON strings, e.g. "2.35" (numbers are refused: no floats)')
    check_decimal(value)  # raises with a readable message
    return Decimal(value)


def _utc_from_str(value: Any) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: times must be UTC")
        # Normalized to UTC: hour and period arithmetic (floor_hour) is done on the fields.
        return value.astimezone(UTC).replace(microsecond=0)
    if not isinstance(value, str):
        raise ValueError('times are RFC 3339 strings in UTC, e.g. "2026-12-01T00:00:00Z"')
    return parse_utc(value).replace(microsecond=0)


DecimalStr = Annotated[
    Decimal,
    BeforeValidator(_decimal_from_str),
    # format "f": str() of a Decimal may use exponent notation ("0E-12"), which parse_decimal refuses.
    PlainSerializer(lambda v: format(v, "f"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": _DECIMAL_PATTERN}),
]


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


NonNegativeDecimalStr = Annotated[
    DecimalStr,
    AfterValidator(_non_negative),
    WithJsonSchema({"type": "string", "pattern": _NON_NEGATIVE_DECIMAL_PATTERN}),
]
PositiveDecimalStr = Annotated[
    DecimalStr,
    AfterValidator(_positive),
    WithJsonSchema({"type": "string", "pattern": _POSITIVE_DECIMAL_PATTERN}),
]

UtcTime = Annotated[
    datetime,
    BeforeValidator(_utc_from_str),
    PlainSerializer(format_utc, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_UTC_PATTERN}),
]

Id = Annotated[str, Field(min_length=1, max_length=limits.MAX_ID_CHARS, pattern=r"^[!-~]+$")]
Text = Annotated[str, Field(min_length=1, max_length=limits.MAX_TEXT_CHARS)]


def _iso_currency(value: str) -> str:
    currency_exponent(value)  # raises UnknownCurrencyError (a ValueError) for non-ISO codes
    return value


def _money_currency_codes() -> list[str]:
    """Every code :func:`currency_exponent` accepts, sorted (the JSON Schema ``enum``)."""
    codes: list[str] = []
    for currency in iso4217.Currency:
        try:
            currency_exponent(currency.code)
        except UnknownCurrencyError:
            continue
        codes.append(currency.code)
    return sorted(codes)


Currency = Annotated[
    str,
    Field(pattern=r"^[A-Z]{3}$"),
    AfterValidator(_iso_currency),
    WithJsonSchema({"type": "string", "enum": _money_currency_codes()}),
]

Barrier = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=limits.MAX_ID_CHARS)],
        Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=limits.MAX_BARRIER_PARTITIONS)],
    ],
    Field(max_length=limits.MAX_BARRIER_TOPICS),
]
"""Logical topic name → the end offset of each of its partitions (index = partition) at some instant."""
