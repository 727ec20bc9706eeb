"""R14: when to try a collection again, when to ask the processor, when to give up. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

RETRY_DAYS: tuple[int, ...] = (1, 3, 5, 7, 10, 14)
"""Days after the first try on which a soft decline or processor error is tried again."""
MAX_TRIES = 1 + len(RETRY_DAYS)
INQUIRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(hours=1),
    *(timedelta(days=1),) * 5,
)
"""An unknown outcome is asked about after 1 min, 5 min, 1 h, then daily 5 times; then an operator."""

DeclineKind = Literal["soft", "hard"]


@dataclass(frozen=True)
class DeclineCodes:
    """Which codes are hard per gateway (configuration, not code); every other decline is soft."""

    hard: dict[str, frozenset[str]]
    default_hard: frozenset[str] = frozenset()

    def kind(self, gateway: str, code: str | None) -> DeclineKind:
        """``code`` as the adapter spells it; Stripe's ``card_declined/stolen_card`` is hard when either
        part is configured hard."""
        hard = self.hard.get(gateway, self.default_hard)
        if code is None:
            return "soft"
        return "hard" if code in hard or any(part in hard for part in code.split("/")) else "soft"


def next_try_at(first_try_at: datetime, tries_made: int) -> datetime | None:
    """The event time of the next try after ``tries_made`` failed soft, or None when dunning is exhausted."""
    assert tries_made >= 1
    if tries_made >= MAX_TRIES:
        return None
    return first_try_at + timedelta(days=RETRY_DAYS[tries_made - 1])


def next_inquiry_after(inquiries_made: int, delays: tuple[timedelta, ...] = INQUIRY_DELAYS) -> timedelta | None:
    """How long after the last question to ask again; None: hand the attempt to an operator."""
    if inquiries_made >= len(delays):
        return None
    return delays[inquiries_made]


def still_unknown(
    inquiries_before: int, asked: bool, delays: tuple[timedelta, ...] = INQUIRY_DELAYS
) -> tuple[int, timedelta | None]:
    """An answer that leaves the outcome unknown: the inquiries made so far (this answer's own question
    counted when ``asked``) and how long until the next one (None: an operator). A send's own timeout —
    also a re-send after the processor had not seen the attempt — starts the schedule: the first delay;
    the k-th inquiry that is still unknown waits the (k+1)-th."""
    made = inquiries_before + 1 if asked else 0
    return made, next_inquiry_after(made, delays)
