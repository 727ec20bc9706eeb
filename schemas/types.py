"""Field types shared by every event model: strict on what we own, explicit about units.

* ``DecimalStr`` — a decimal that must arrive as a JSON *string* (never a JSON number, so no float
  ever carries an amount), parsed to :class:`decimal.Decimal`, serialized back as a string.
* ``UtcTime`` — RFC 3339, must be UTC; sub-second parts are floored to the second because billing
  resolution is one second (docs/billing-rules.md, "Input contract").
* ``Id`` — a non-empty identifier of bounded length, printable, no whitespace.

``UtcTime``, ``Id`` and ``Text`` are the kernel's (``libs.fields``: the CloudEvents envelope uses them),
re-exported here for the event models.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import iso4217
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

from libs import limits
from libs.errors import UnknownCurrencyError
from libs.fields import Id as Id
from libs.fields import Text as Text
from libs.fields import UtcTime as UtcTime
from libs.money import check_decimal, currency_exponent

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
