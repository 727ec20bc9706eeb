"""Every error Settle raises, sorted by what the caller does next.

::

    SettleError
    ├── PermanentError            the message can never succeed: dead-letter it with the reason
    │   ├── InvalidEventError     bytes that are not JSON / not CloudEvents / fail the schema
    │   ├── IdempotencyConflictError   same event id (or key) seen before with a different payload
    │   ├── KeyHeldError          an earlier message of its key is dead-lettered: it waits behind it
    │   ├── InvalidAmountError    an amount that is not a plain decimal string
    │   ├── UnknownCurrencyError  not an ISO 4217 currency with a minor unit
    │   ├── CurrencyMismatchError amounts of different currencies combined
    │   └── DomainRuleError       the event breaks a billing rule (quarantined with its reason)
    ├── RetryableError            may pass if tried again (deadlock, serialization failure):
    │                             bounded retries with jitter, then dead letter
    ├── InfrastructureError       a dependency is down: do not ack, back off, retry without limit
    │   ├── DatabaseUnavailableError
    │   └── BrokerUnavailableError
    ├── LedgerError               the ledger refused an entry
    │   ├── UnbalancedEntryError  debits ≠ credits for a currency (a bug: permanent)
    │   ├── LedgerFloorError      an account would go below its floor
    │   └── UnknownAccountError
    ├── ConfigurationError        the operator must act: a missing tool, setting or service
    │   ├── MissingDependencyError
    │   └── NotMigratedError      the database lacks migrations (a read command never applies them)
    └── OperatorRequestError      an operator's request cannot be done as asked
        └── ProcessorReportConflict   a report line reuses an imported line's id for another transaction

An error may carry a ``hint``: the command that fixes it (``settle migrate``), shown by the CLI.

The mapping from these classes to acknowledgements lives in exactly one place:
:func:`libs.messaging.consume.classify`.
"""

from __future__ import annotations


class SettleError(Exception):
    """Root of Settle's errors. ``reason`` is what a human reads in the dead-letter table.

    ``hint`` is the command an operator runs to fix it (e.g. ``settle migrate``), or None.
    """

    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint

    @property
    def reason(self) -> str:
        return f"{type(self).__name__}: {self}"


class PermanentError(SettleError):
    """Retrying cannot help; the message goes to the dead letters."""


class InvalidEventError(PermanentError):
    """The bytes are not a valid event of the topic (not JSON, not CloudEvents, schema failure)."""


class IdempotencyConflictError(PermanentError):
    """The same idempotency key arrived with a different payload fingerprint."""


class InvalidAmountError(PermanentError, ValueError):
    """An amount that is not a plain decimal string within bounds."""


class UnknownCurrencyError(PermanentError, ValueError):
    """A code that is not an ISO 4217 currency with a minor unit."""


class CurrencyMismatchError(PermanentError):
    """Two amounts of different currencies were combined."""


class KeyHeldError(PermanentError):
    """An earlier message of the same key was dead-lettered: this one waits behind it (not applied out
    of order) until an operator redrives or drops the first."""


class DomainRuleError(PermanentError):
    """The event contradicts a billing rule; it is quarantined with its reason and has no effect."""


class RetryableError(SettleError):
    """A fault that may pass (serialization failure, deadlock, lock timeout)."""


class InfrastructureError(SettleError):
    """A dependency is unavailable; the message is not at fault and is not acknowledged."""


class DatabaseUnavailableError(InfrastructureError):
    pass


class BrokerUnavailableError(InfrastructureError):
    pass


class LedgerError(SettleError):
    """The ledger refused an entry."""


class UnbalancedEntryError(LedgerError, PermanentError):
    """Debits and credits of an entry differ for some currency."""


class LedgerFloorError(LedgerError, PermanentError):
    """Posting would take an account below its floor (e.g. a wallet below zero)."""


class UnknownAccountError(LedgerError, PermanentError):
    pass


class ConfigurationError(SettleError):
    """Something the operator must install, start or set."""


class MissingDependencyError(ConfigurationError):
    pass


class NotMigratedError(ConfigurationError):
    """The database has pending migrations (or none applied); only ``settle migrate`` applies them."""

    hint = "settle migrate"


class OperatorRequestError(SettleError):
    """An operator's request (``settle held``, ``settle invoices quarantine``) cannot be done as asked;
    the reason says what is possible instead."""


class ProcessorReportConflict(OperatorRequestError):
    """A processor report reuses the id of an imported line for another transaction (its books were reset,
    or it is another account's report): nothing of it is imported until an operator looks."""
