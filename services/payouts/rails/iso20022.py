"""ISO 20022 payout messages (R16): pain.001 for wires and SEPA credit transfers, pacs.008 for the
instant rails (RTP, FedNow), and a reader of the status reports that reject them (pacs.002, pain.002).

The XML is built as an element tree with lxml (never a string template) and every built document is
validated against the official XSD (``xsd/``, see its NOTICE.md) before it is returned: a document
the schema refuses is a bug and raises :class:`InvalidBatchError`.

Determinism: ``MsgId`` is the batch id (or, when it does not fit ``Max35Text``, ``B`` + 34 hex digits
of its SHA-256), ``CreDtTm`` is :attr:`PayoutBatch.created_at` in UTC, transactions are ordered by
(requested date, currency, payout id), ``EndToEndId`` and ``InstrId`` are the payout id, and the
pacs.008 UETR is derived from the payout id (:func:`uetr`). The same batch always gives the same bytes.

Amounts are written from integer minor units with the currency's ISO 4217 exponent
(:func:`libs.money.currency_exponent`): ``12345`` USD → ``123.45``, ``500`` JPY → ``500``.
"""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date
from functools import lru_cache
from itertools import groupby
from pathlib import Path
from typing import Literal

from lxml import etree

from libs.errors import UnknownCurrencyError
from libs.money import currency_exponent
from services.payouts.rails.payees import check_bic, check_iban, check_name, check_payee
from services.payouts.rails.port import (
    Account,
    BankFileError,
    BuiltFile,
    IbanAccount,
    InvalidBatchError,
    Payee,
    PayoutBatch,
    PayoutInstruction,
    RailReturn,
    UsBankAccount,
)

__all__ = [
    "MAX_TRANSACTIONS",
    "PACS008",
    "PAIN001",
    "Debtor",
    "InstantRail",
    "Pain001Rail",
    "format_amount",
    "message_id",
    "read_status_report",
    "requested_dates",
    "schema",
    "uetr",
]

PAIN001 = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
PACS008 = "urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"
XSD_DIR = Path(__file__).with_name("xsd")
MAX_TRANSACTIONS = 100_000
"""Limit per document (banks cap pain.001 files well below the schema's 15 digits)."""

_SEPA_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-?:().,'+ ")
_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


@lru_cache(maxsize=4)
def schema(name: str) -> etree.XMLSchema:
    """The official XSD ``name`` (e.g. ``pain.001.001.09``), parsed once."""
    return etree.XMLSchema(etree.parse(str(XSD_DIR / f"{name}.xsd"), _SAFE_PARSER))


@dataclass(frozen=True, slots=True)
class Debtor:
    """Our side of the payment: the account the money leaves and how our bank is identified
    (a BIC for an IBAN account, the ABA routing number for a US account)."""

    name: str
    account: IbanAccount | UsBankAccount
    initiating_party: str = ""


def format_amount(amount_minor: int, currency: str) -> str:
    """Integer minor units → the decimal ISO 20022 writes (``12345`` USD → ``"123.45"``). Exact."""
    assert isinstance(amount_minor, int) and amount_minor >= 0
    exponent = currency_exponent(currency)
    if exponent == 0:
        return str(amount_minor)
    whole, frac = divmod(amount_minor, 10**exponent)
    return f"{whole}.{frac:0{exponent}d}"


def uetr(payout_id: str) -> str:
    """The payout's Unique End-to-end Transaction Reference: the schema wants a version-4 UUID, so the
    first 16 bytes of SHA-256(payout id) with the version and variant bits set — stable across rebuilds."""
    return str(uuid.UUID(bytes=hashlib.sha256(payout_id.encode()).digest()[:16], version=4))


def message_id(batch_id: str) -> str:
    if 0 < len(batch_id) <= 35 and batch_id.isascii() and batch_id.isprintable():
        return batch_id
    return "B" + hashlib.sha256(batch_id.encode()).hexdigest()[:34]


def _latin(text: str, width: int, *, sepa: bool) -> str:
    """Free text as the scheme accepts it: SEPA's Latin subset (accents folded, others → space), else
    printable Unicode; truncated to ``width``; never empty."""
    if sepa:
        folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
        text = "".join(ch if ch in _SEPA_CHARS else " " for ch in folded)
    else:
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())[:width].strip()
    return text or "NOTPROVIDED"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    # Every element lives in the document's one namespace: take it from the parent's "{ns}Local" tag.
    parent_tag: str = parent.tag  # elements we build always have str tags
    namespace = parent_tag[: parent_tag.index("}") + 1]
    element = etree.SubElement(parent, namespace + tag, attrib)
    if text is not None:
        element.text = text
    return element


def _account(parent: etree._Element, tag: str, account: Account) -> None:
    identification = _sub(_sub(parent, tag), "Id")
    if isinstance(account, IbanAccount):
        _sub(identification, "IBAN", account.iban)
    elif isinstance(account, UsBankAccount):
        _sub(_sub(identification, "Othr"), "Id", account.account_number)
    else:
        raise InvalidBatchError("ISO 20022 rails pay bank accounts, not wallets")


def _agent(parent: etree._Element, tag: str, account: Account) -> None:
    institution = _sub(_sub(parent, tag), "FinInstnId")
    if isinstance(account, IbanAccount) and account.bic:
        _sub(institution, "BICFI", account.bic)
    elif isinstance(account, UsBankAccount):
        member = _sub(institution, "ClrSysMmbId")
        _sub(_sub(member, "ClrSysId"), "Cd", "USABA")
        _sub(member, "MmbId", account.routing_number)
    else:  # SEPA without a BIC (IBAN-only since 2016)
        _sub(_sub(institution, "Othr"), "Id", "NOTPROVIDED")


def _validated(document: etree._Element, name: str) -> bytes:
    content: bytes = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
    xsd = schema(name)
    if not xsd.validate(document):
        first = (
            xsd.error_log.filter_from_errors()[0] if xsd.error_log.filter_from_errors() else xsd.error_log.last_error
        )
        raise InvalidBatchError(f"{name} refused by its XSD: line {first.line}: {first.message}")
    return content


def _check_batch(batch: PayoutBatch, rail: str, validate: Callable[[Payee], list[str]]) -> None:
    if len(batch.instructions) > MAX_TRANSACTIONS:
        raise InvalidBatchError(f"batch {batch.batch_id}: over {MAX_TRANSACTIONS} transactions in one document")
    for i in batch.instructions:
        if len(i.payout_id) > 35 or not i.payout_id.isascii():
            raise InvalidBatchError(f"payout {i.payout_id}: the end-to-end id (the payout id) is ASCII Max35Text")
        try:
            currency_exponent(i.currency)
        except UnknownCurrencyError as exc:
            raise InvalidBatchError(f"payout {i.payout_id}: {exc}") from exc
        problems = validate(i.payee)
        if problems:
            raise InvalidBatchError(f"payout {i.payout_id} by {rail}: " + "; ".join(problems))


def _ordered(instructions: Iterable[PayoutInstruction]) -> list[PayoutInstruction]:
    return sorted(instructions, key=lambda i: (i.effective_date, i.currency, i.payout_id))


def _control_sum(instructions: Sequence[PayoutInstruction]) -> str:
    """CtrlSum is a plain sum of the amounts as written; only meaningful in one currency, so the minor
    units of mixed exponents are summed as decimals exactly (integer arithmetic on a common scale)."""
    scale = max(currency_exponent(i.currency) for i in instructions)
    total = sum(i.amount_minor * 10 ** (scale - currency_exponent(i.currency)) for i in instructions)
    if scale == 0:
        return str(total)
    whole, frac = divmod(total, 10**scale)
    return f"{whole}.{frac:0{scale}d}"


class Pain001Rail:
    """Customer credit transfer initiation (pain.001.001.09) to our bank: ``scheme="sepa"`` for SEPA
    credit transfers (EUR to SEPA IBANs, service level SEPA, charges SLEV), ``scheme="wire"`` for
    cross-border or domestic wires (any ISO 4217 currency, IBAN+BIC or US routing+account, charges SHAR
    unless configured). One ``PmtInf`` per (requested execution date, currency)."""

    def __init__(self, debtor: Debtor, *, scheme: Literal["sepa", "wire"], charge_bearer: str | None = None) -> None:
        self.debtor = debtor
        self.scheme = scheme
        self.name = "sepa" if scheme == "sepa" else "wire"
        self.max_per_file = MAX_TRANSACTIONS
        self.charge_bearer = charge_bearer or ("SLEV" if scheme == "sepa" else "SHAR")
        assert self.charge_bearer in ("DEBT", "CRED", "SHAR", "SLEV")
        if scheme == "sepa" and not isinstance(debtor.account, IbanAccount):
            raise InvalidBatchError("SEPA debits an IBAN account")

    def validate(self, payee: Payee) -> list[str]:
        account = payee.account
        if self.scheme == "sepa":
            if not isinstance(account, IbanAccount):
                return [*check_payee(payee), "SEPA pays IBAN accounts only"]
            # one IBAN parse for the check digits and the SEPA zone (the hot path of a 50,000-payout file)
            problems = check_name(payee.name) + check_iban(account.iban, sepa=True)
            return problems + (check_bic(account.bic) if account.bic is not None else [])
        problems = check_payee(payee)
        if isinstance(account, IbanAccount) and account.bic is None:
            problems.append("a wire to an IBAN needs the beneficiary bank's BIC")
        elif not isinstance(account, (IbanAccount, UsBankAccount)):
            problems.append("wires pay bank accounts only")
        return problems

    def build(self, batch: PayoutBatch) -> BuiltFile:
        root = self.document(batch)
        content = _validated(root, "pain.001.001.09")
        ordered = batch.instructions
        currencies = {i.currency for i in ordered}
        return BuiltFile(
            file_id=f"pain001-{message_id(batch.batch_id)}",
            content=content,
            references={i.payout_id: i.payout_id for i in ordered},
            count=len(ordered),
            total_minor=sum(i.amount_minor for i in ordered) if len(currencies) == 1 else 0,
            currency=currencies.pop() if len(currencies) == 1 else "",
            media_type="application/xml",
        )

    def document(self, batch: PayoutBatch) -> etree._Element:
        """The pain.001 element tree of ``batch``, checked against our rules but not yet against the
        XSD (:meth:`build` does both; ``settle bench payouts`` times them apart)."""
        _check_batch(batch, self.name, self.validate)
        sepa = self.scheme == "sepa"
        if sepa and any(i.currency != "EUR" for i in batch.instructions):
            raise InvalidBatchError(f"batch {batch.batch_id}: SEPA credit transfers are in EUR only")
        msg_id = message_id(batch.batch_id)
        ordered = _ordered(batch.instructions)
        root = etree.Element(f"{{{PAIN001}}}Document", nsmap={None: PAIN001})
        initiation = _sub(root, "CstmrCdtTrfInitn")
        header = _sub(initiation, "GrpHdr")
        _sub(header, "MsgId", msg_id)
        _sub(header, "CreDtTm", batch.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        _sub(header, "NbOfTxs", str(len(ordered)))
        _sub(header, "CtrlSum", _control_sum(ordered))
        _sub(_sub(header, "InitgPty"), "Nm", _latin(self.debtor.initiating_party or self.debtor.name, 70, sepa=sepa))
        name_width = 70 if sepa else 140
        for n, ((when, currency), group_iter) in enumerate(
            groupby(ordered, key=lambda i: (i.effective_date, i.currency)), 1
        ):
            group = list(group_iter)
            info = _sub(initiation, "PmtInf")
            _sub(info, "PmtInfId", f"{msg_id[:28]}-{n:06d}")
            _sub(info, "PmtMtd", "TRF")
            _sub(info, "NbOfTxs", str(len(group)))
            _sub(info, "CtrlSum", _control_sum(group))
            if sepa:
                _sub(_sub(_sub(info, "PmtTpInf"), "SvcLvl"), "Cd", "SEPA")
            _sub(_sub(info, "ReqdExctnDt"), "Dt", when.isoformat())
            _sub(_sub(info, "Dbtr"), "Nm", _latin(self.debtor.name, name_width, sepa=sepa))
            _account(info, "DbtrAcct", self.debtor.account)
            _agent(info, "DbtrAgt", self.debtor.account)
            _sub(info, "ChrgBr", self.charge_bearer)
            for i in group:
                tx = _sub(info, "CdtTrfTxInf")
                ids = _sub(tx, "PmtId")
                _sub(ids, "InstrId", i.payout_id)
                _sub(ids, "EndToEndId", i.payout_id)
                _sub(_sub(tx, "Amt"), "InstdAmt", format_amount(i.amount_minor, currency), Ccy=currency)
                _agent(tx, "CdtrAgt", i.account)
                _sub(_sub(tx, "Cdtr"), "Nm", _latin(i.payee_name, name_width, sepa=sepa))
                _account(tx, "CdtrAcct", i.account)
                if i.reference.strip():
                    _sub(_sub(tx, "RmtInf"), "Ustrd", _latin(i.reference, 140, sepa=sepa))
        return root

    def parse_returns(self, content: bytes) -> list[RailReturn]:
        return read_status_report(content)


class InstantRail:
    """FI-to-FI customer credit transfer (pacs.008.001.08) for RTP and FedNow: USD between US accounts,
    settled by the clearing system (``SttlmMtd`` CLRG), one transaction per message by default as both
    schemes require (``max_per_message``). ``clearing_system`` is written as ``SttlmInf/ClrSys/Prtry``
    (defaults ``TCH`` for RTP, ``FDN`` for FedNow: set it to what the scheme's usage guide says). The
    schemes' own usage guides restrict the message further (business application header head.001,
    participant ids); this writer checks the ISO schema only."""

    def __init__(
        self,
        debtor: Debtor,
        *,
        name: Literal["rtp", "fednow"],
        max_per_message: int = 1,
        clearing_system: str | None = None,
    ) -> None:
        if not isinstance(debtor.account, UsBankAccount):
            raise InvalidBatchError(f"{name} debits a US account")
        assert 1 <= max_per_message <= MAX_TRANSACTIONS
        self.debtor = debtor
        self.name: str = name
        self.clearing_system = clearing_system or ("TCH" if name == "rtp" else "FDN")
        self.max_per_message = max_per_message
        self.max_per_file = max_per_message

    def validate(self, payee: Payee) -> list[str]:
        problems = check_payee(payee)
        if not isinstance(payee.account, UsBankAccount):
            problems.append(f"{self.name} pays US bank accounts (routing + account number) only")
        return problems

    def build(self, batch: PayoutBatch) -> BuiltFile:
        _check_batch(batch, self.name, self.validate)
        if len(batch.instructions) > self.max_per_message:
            raise InvalidBatchError(f"{self.name}: at most {self.max_per_message} transaction(s) per message")
        if any(i.currency != "USD" for i in batch.instructions):
            raise InvalidBatchError(f"{self.name} carries USD only")
        if len({i.effective_date for i in batch.instructions}) > 1:
            raise InvalidBatchError(f"{self.name}: one interbank settlement date per message")
        msg_id = message_id(batch.batch_id)
        ordered = _ordered(batch.instructions)
        total = sum(i.amount_minor for i in ordered)
        root = etree.Element(f"{{{PACS008}}}Document", nsmap={None: PACS008})
        transfer = _sub(root, "FIToFICstmrCdtTrf")
        header = _sub(transfer, "GrpHdr")
        _sub(header, "MsgId", msg_id)
        _sub(header, "CreDtTm", batch.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        _sub(header, "NbOfTxs", str(len(ordered)))
        _sub(header, "TtlIntrBkSttlmAmt", format_amount(total, "USD"), Ccy="USD")
        _sub(header, "IntrBkSttlmDt", ordered[0].effective_date.isoformat())
        settlement = _sub(header, "SttlmInf")
        _sub(settlement, "SttlmMtd", "CLRG")
        _sub(_sub(settlement, "ClrSys"), "Prtry", self.clearing_system)
        for i in ordered:
            tx = _sub(transfer, "CdtTrfTxInf")
            ids = _sub(tx, "PmtId")
            _sub(ids, "InstrId", i.payout_id)
            _sub(ids, "EndToEndId", i.payout_id)
            _sub(ids, "TxId", i.payout_id)
            _sub(ids, "UETR", uetr(i.payout_id))
            _sub(tx, "IntrBkSttlmAmt", format_amount(i.amount_minor, "USD"), Ccy="USD")
            _sub(tx, "IntrBkSttlmDt", i.effective_date.isoformat())
            _sub(tx, "ChrgBr", "SLEV")
            _agent(tx, "InstgAgt", self.debtor.account)
            _agent(tx, "InstdAgt", i.account)
            _sub(_sub(tx, "Dbtr"), "Nm", _latin(self.debtor.name, 140, sepa=False))
            _account(tx, "DbtrAcct", self.debtor.account)
            _agent(tx, "DbtrAgt", self.debtor.account)
            _agent(tx, "CdtrAgt", i.account)
            _sub(_sub(tx, "Cdtr"), "Nm", _latin(i.payee_name, 140, sepa=False))
            _account(tx, "CdtrAcct", i.account)
            if i.reference.strip():
                _sub(_sub(tx, "RmtInf"), "Ustrd", _latin(i.reference, 140, sepa=False))
        content = _validated(root, "pacs.008.001.08")
        return BuiltFile(
            file_id=f"pacs008-{msg_id}",
            content=content,
            references={i.payout_id: i.payout_id for i in ordered},
            count=len(ordered),
            total_minor=total,
            currency="USD",
            media_type="application/xml",
        )

    def parse_returns(self, content: bytes) -> list[RailReturn]:
        return read_status_report(content)


# ------------------------------------------------------------------------------------ status reports


def _local(element: etree._Element) -> str:
    return str(etree.QName(element).localname)


def _child(element: etree._Element | None, *path: str) -> etree._Element | None:
    """The first descendant along ``path`` of local names (any namespace version), or None."""
    for name in path:
        if element is None:
            return None
        element = next((c for c in element if isinstance(c.tag, str) and _local(c) == name), None)
    return element


def _text(element: etree._Element | None, *path: str) -> str | None:
    found = _child(element, *path)
    return found.text.strip() if found is not None and found.text else None


def _reason(status: etree._Element | None) -> tuple[str, str]:
    """(code, words) of a ``StsRsnInf``: the ISO external code (``AC01``…) or a proprietary one."""
    info = _child(status, "StsRsnInf")
    code = _text(info, "Rsn", "Cd") or _text(info, "Rsn", "Prtry") or "NARR"
    words = " ".join(
        (c.text or "").strip()
        for c in (info if info is not None else [])
        if isinstance(c.tag, str) and _local(c) == "AddtlInf"
    ).strip()
    return code, words or _REASONS.get(code, f"rejected ({code})")


_REASONS = {
    "AC01": "incorrect account number",
    "AC03": "invalid creditor account number",
    "AC04": "closed account number",
    "AC06": "blocked account",
    "AG01": "transaction forbidden on this type of account",
    "AM04": "insufficient funds",
    "AM05": "duplication",
    "BE04": "missing creditor address",
    "DUPL": "duplicate payment",
    "FF01": "invalid file format",
    "MS03": "reason not specified",
    "NARR": "narrative reason",
    "RC01": "bank identifier incorrect",
    "RR04": "regulatory reason",
}
"""Words for common ISO 20022 ExternalStatusReason1Code values (others: "rejected (CODE)")."""


def block_end_to_end_ids(document: bytes, pmt_inf_id: str) -> list[str]:
    """The end-to-end ids (our payout ids) of one payment-information block of a pain.001 we built: what a
    status report rejecting that block (``OrgnlPmtInfId``) rejects. Empty when the block is not in it."""
    root = etree.fromstring(document, _SAFE_PARSER)
    initiation = next((c for c in root if isinstance(c.tag, str)), None)
    for block in initiation if initiation is not None else ():
        if isinstance(block.tag, str) and _local(block) == "PmtInf" and _text(block, "PmtInfId") == pmt_inf_id:
            return [
                _text(tx, "PmtId", "EndToEndId") or ""
                for tx in block
                if isinstance(tx.tag, str) and _local(tx) == "CdtTrfTxInf"
            ]
    return []


def read_status_report(content: bytes) -> list[RailReturn]:
    """Rejects in a pacs.002 (FIToFIPmtStsRpt) or pain.002 (CstmrPmtStsRpt), any version.

    One :class:`RailReturn` of kind ``reject`` per transaction with status ``RJCT`` (its original
    end-to-end id is our payout id), and one per group or payment-information block rejected as a
    whole (``rail_reference`` is then the original message or PmtInf id, ``payout_id`` None: every
    payout of it is rejected). Accepted statuses (ACSC, ACCP, ACTC, PDNG …) are not returns.

    A report about a message that the bank did not reject as a whole (a group status other than
    ``RJCT``, or none) also proves the message arrived: one ``acknowledgement`` first, its
    ``rail_reference`` and ``original_message_id`` the original message id (the file's MsgId). The
    payouts worker moves a ``submitted`` file to ``acknowledged`` on it; its rejects still apply.
    Raises BankFileError when the bytes are not such a report.
    """
    try:
        root = etree.fromstring(content, _SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise BankFileError(f"status report is not well-formed XML: {exc}") from exc
    report = next((c for c in root if isinstance(c.tag, str)), None) if _local(root) == "Document" else None
    if report is None or _local(report) not in ("FIToFIPmtStsRpt", "CstmrPmtStsRpt"):
        raise BankFileError("not a pacs.002 or pain.002 status report")
    found: list[RailReturn] = []
    group = _child(report, "OrgnlGrpInfAndSts")
    original_msg = _text(group, "OrgnlMsgId")
    group_status = _text(group, "GrpSts")
    if group_status == "RJCT":
        code, words = _reason(group)
        found.append(RailReturn("reject", code, original_msg or "", words, original_message_id=original_msg))
    elif original_msg:
        found.append(
            RailReturn(
                "acknowledgement",
                group_status or "",
                original_msg,
                f"status report: group status {group_status}" if group_status else "status report",
                original_message_id=original_msg,
            )
        )
    blocks = [c for c in report if isinstance(c.tag, str) and _local(c) == "OrgnlPmtInfAndSts"]
    transactions = [c for c in report if isinstance(c.tag, str) and _local(c) == "TxInfAndSts"]
    for block in blocks:
        if _text(block, "PmtInfSts") == "RJCT":
            code, words = _reason(block)
            found.append(
                RailReturn("reject", code, _text(block, "OrgnlPmtInfId") or "", words, original_message_id=original_msg)
            )
        transactions += [c for c in block if isinstance(c.tag, str) and _local(c) == "TxInfAndSts"]
    for tx in transactions:
        if _text(tx, "TxSts") != "RJCT":
            continue
        code, words = _reason(tx)
        end_to_end = _text(tx, "OrgnlEndToEndId") or _text(tx, "OrgnlTxId") or ""
        amount = _text(tx, "OrgnlTxRef", "IntrBkSttlmAmt") or _text(tx, "OrgnlTxRef", "Amt", "InstdAmt")
        found.append(
            RailReturn(
                "reject",
                code,
                end_to_end,
                words,
                payout_id=end_to_end or None,
                amount_minor=_minor(amount, _currency(tx)) if amount else None,
                original_message_id=original_msg,
            )
        )
    return found


def _currency(tx: etree._Element) -> str | None:
    for path in (("OrgnlTxRef", "IntrBkSttlmAmt"), ("OrgnlTxRef", "Amt", "InstdAmt")):
        element = _child(tx, *path)
        if element is not None:
            currency = element.get("Ccy")
            return str(currency) if currency is not None else None
    return None


def _minor(amount: str, currency: str | None) -> int | None:
    """A decimal amount string → minor units, exactly; None when it has more places than the currency."""
    if currency is None:
        return None
    exponent = currency_exponent(currency)
    whole, _, frac = amount.partition(".")
    frac = frac.rstrip("0")
    if len(frac) > exponent or not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(whole) * int(10**exponent) + int(frac.ljust(exponent, "0") or "0")


def requested_dates(content: bytes) -> list[date]:
    """The requested execution dates of a pain.001, in document order (for tests and operators)."""
    root = etree.fromstring(content, _SAFE_PARSER)
    return [date.fromisoformat(_text(when, "Dt") or "") for when in root.iter(f"{{{PAIN001}}}ReqdExctnDt")]
