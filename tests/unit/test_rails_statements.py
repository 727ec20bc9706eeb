"""Bank statements (R17): camt.053 and BAI2 to bank lines in integer minor units, controls checked."""

from __future__ import annotations

from datetime import date

import pytest
from lxml import etree

from services.payouts.rails.iso20022 import schema
from services.payouts.rails.port import BankFileError
from services.payouts.rails.statements import parse_bai2, parse_camt053

CAMT053 = b"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>STMT-20261208</MsgId><CreDtTm>2026-12-08T06:00:00Z</CreDtTm></GrpHdr>
    <Stmt>
      <Id>S-2026-12-07</Id>
      <CreDtTm>2026-12-08T06:00:00Z</CreDtTm>
      <Acct><Id><IBAN>DE89370400440532013000</IBAN></Id><Ccy>EUR</Ccy></Acct>
      <Bal>
        <Tp><CdOrPrtry><Cd>OPBD</Cd></CdOrPrtry></Tp>
        <Amt Ccy="EUR">10000.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>2026-12-07</Dt></Dt>
      </Bal>
      <Bal>
        <Tp><CdOrPrtry><Cd>CLBD</Cd></CdOrPrtry></Tp>
        <Amt Ccy="EUR">9749.98</Amt><CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>2026-12-07</Dt></Dt>
      </Bal>
      <Ntry>
        <Amt Ccy="EUR">300.02</Amt><CdtDbtInd>DBIT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>
        <BookgDt><Dt>2026-12-07</Dt></BookgDt><ValDt><Dt>2026-12-07</Dt></ValDt><AcctSvcrRef>BATCH-77</AcctSvcrRef>
        <BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>ICDT</Cd><SubFmlyCd>ESCT</SubFmlyCd></Fmly></Domn></BkTxCd>
        <NtryDtls>
          <TxDtls><Refs><EndToEndId>po-0001</EndToEndId></Refs><Amt Ccy="EUR">100.00</Amt><CdtDbtInd>DBIT</CdtDbtInd>
            <RmtInf><Ustrd>Payout 2026-11</Ustrd></RmtInf></TxDtls>
          <TxDtls><Refs><AcctSvcrRef>TX-2</AcctSvcrRef><EndToEndId>po-0002</EndToEndId></Refs>
            <Amt Ccy="EUR">200.00</Amt><CdtDbtInd>DBIT</CdtDbtInd></TxDtls>
          <TxDtls><Refs><EndToEndId>NOTPROVIDED</EndToEndId></Refs>
            <Amt Ccy="EUR">0.02</Amt><CdtDbtInd>DBIT</CdtDbtInd></TxDtls>
        </NtryDtls>
      </Ntry>
      <Ntry>
        <Amt Ccy="EUR">50.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>
        <BookgDt><Dt>2026-12-07</Dt></BookgDt><ValDt><Dt>2026-12-07</Dt></ValDt>
        <BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>ICDT</Cd><SubFmlyCd>RRTN</SubFmlyCd></Fmly></Domn></BkTxCd>
        <NtryDtls><TxDtls><Refs><EndToEndId>po-0009</EndToEndId></Refs>
          <RtrInf><Rsn><Cd>AC04</Cd></Rsn></RtrInf></TxDtls></NtryDtls>
      </Ntry>
      <Ntry>
        <Amt Ccy="EUR">20.00</Amt><CdtDbtInd>DBIT</CdtDbtInd><Sts><Cd>PDNG</Cd></Sts>
        <BkTxCd><Prtry><Cd>FEE</Cd></Prtry></BkTxCd>
        <AddtlNtryInf>Account fee</AddtlNtryInf>
      </Ntry>
    </Stmt>
  </BkToCstmrStmt>
</Document>"""


def test_camt053_fixture_is_valid_against_the_official_xsd() -> None:
    xsd = schema("camt.053.001.08")
    assert xsd.validate(etree.fromstring(CAMT053)), xsd.error_log


def test_camt053_lines_in_minor_units() -> None:
    [statement] = parse_camt053(CAMT053)
    assert (statement.account, statement.currency, statement.statement_id) == (
        "DE89370400440532013000",
        "EUR",
        "S-2026-12-07",
    )
    assert (statement.opening_minor, statement.closing_minor) == (1_000_000, 974_998)
    got = [
        (x.end_to_end_id, x.amount_minor, x.direction, x.status, x.type_code, x.return_reason) for x in statement.lines
    ]
    assert got == [
        ("po-0001", 100_00, "debit", "booked", "PMNT/ICDT/ESCT", None),
        ("po-0002", 200_00, "debit", "booked", "PMNT/ICDT/ESCT", None),
        (None, 2, "debit", "booked", "PMNT/ICDT/ESCT", None),
        ("po-0009", 50_00, "credit", "booked", "PMNT/ICDT/RRTN", "AC04"),
        (None, 20_00, "debit", "pending", "FEE", None),
    ]
    first, second = statement.lines[:2]
    assert first.description == "Payout 2026-11" and first.bank_reference == "BATCH-77"
    assert second.bank_reference == "TX-2"
    assert first.booking_date == first.value_date == date(2026, 12, 7)
    assert statement.lines[4].description == "Account fee" and statement.lines[4].booking_date is None
    assert sum(x.signed_minor for x in statement.lines if x.status == "booked") == -250_02


def test_camt053_refuses_what_does_not_add_up() -> None:
    with pytest.raises(BankFileError, match="≠ closing"):
        parse_camt053(CAMT053.replace(b"9749.98", b"9749.99"))
    with pytest.raises(BankFileError, match="transactions add up"):
        parse_camt053(CAMT053.replace(b'<Amt Ccy="EUR">200.00</Amt>', b'<Amt Ccy="EUR">200.01</Amt>'))
    with pytest.raises(BankFileError, match="more decimal places"):
        parse_camt053(CAMT053.replace(b'<Amt Ccy="EUR">0.02</Amt>', b'<Amt Ccy="EUR">0.015</Amt>'))
    with pytest.raises(BankFileError, match=r"not a camt\.053"):
        parse_camt053(b"<Document/>")
    with pytest.raises(BankFileError, match="well-formed"):
        parse_camt053(b"<Document")


def test_camt053_older_versions_with_plain_status() -> None:
    old = CAMT053.replace(b"camt.053.001.08", b"camt.053.001.02").replace(
        b"<Sts><Cd>BOOK</Cd></Sts>", b"<Sts>BOOK</Sts>"
    )
    old = old.replace(b"<Sts><Cd>PDNG</Cd></Sts>", b"<Sts>PDNG</Sts>")
    [statement] = parse_camt053(old)
    assert [x.status for x in statement.lines] == ["booked"] * 4 + ["pending"]


def test_camt053_a_reversal_books_in_the_direction_it_states() -> None:
    """ISO 20022: with ``RvslInd`` true, CRDT means the original operation was a debit — the entry is a
    credit. Reading it the other way round also broke the opening + entries = closing check."""
    reversal = CAMT053.replace(
        b'<Amt Ccy="EUR">50.00</Amt><CdtDbtInd>CRDT</CdtDbtInd>',
        b'<Amt Ccy="EUR">50.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><RvslInd>true</RvslInd>',
    )
    assert reversal != CAMT053
    xsd = schema("camt.053.001.08")
    assert xsd.validate(etree.fromstring(reversal)), xsd.error_log
    [statement] = parse_camt053(reversal)
    assert [(x.end_to_end_id, x.direction) for x in statement.lines][3] == ("po-0009", "credit")
    assert sum(x.signed_minor for x in statement.lines if x.status == "booked") == -250_02


BAI2 = b"""01,021000021,SETTLE,261208,0600,1,,,2/
02,SETTLE,021000021,1,261207,2400,USD,2/
03,123456789,USD,010,1000000,,,015,960000,,/
16,495,25000,Z,WIRE1,po-0001,Outgoing wire, to Acme/
88,for November
16,165,5000,V,261207,0000,ACH1,,ACH return R01 po-0002/
16,475,20000,S,10000,5000,5000,CHK1,,CHECK/
16,890,0,Z,,,info only/
49,2010000,7/
98,2010000,1,9/
99,2010000,1,11/
"""


def test_bai2_lines_and_controls() -> None:
    [statement] = parse_bai2(BAI2)
    assert (statement.account, statement.currency) == ("123456789", "USD")
    assert (statement.opening_minor, statement.closing_minor) == (1_000_000, 960_000)
    got = [
        (x.type_code, x.amount_minor, x.direction, x.status, x.bank_reference, x.customer_reference)
        for x in statement.lines
    ]
    assert got == [
        ("495", 250_00, "debit", "booked", "WIRE1", "po-0001"),
        ("165", 50_00, "credit", "booked", "ACH1", None),
        ("475", 200_00, "debit", "booked", "CHK1", None),
        ("890", 0, "debit", "info", None, None),
    ]
    assert statement.lines[0].description == "Outgoing wire, to Acme for November"
    assert (
        statement.lines[1].value_date == date(2026, 12, 7)
        and statement.lines[1].description == "ACH return R01 po-0002"
    )
    assert statement.lines[0].booking_date == date(2026, 12, 7)


def test_bai2_refuses_wrong_controls() -> None:
    with pytest.raises(BankFileError, match="control total 2010001"):
        parse_bai2(BAI2.replace(b"49,2010000,7/", b"49,2010001,7/"))
    with pytest.raises(BankFileError, match="6 records stated, 7 found"):
        parse_bai2(BAI2.replace(b"49,2010000,7/", b"49,2010000,6/"))
    with pytest.raises(BankFileError, match="group trailer"):
        parse_bai2(BAI2.replace(b"98,2010000,1,9/", b"98,2010000,2,9/"))
    with pytest.raises(BankFileError, match="file trailer"):
        parse_bai2(BAI2.replace(b"99,2010000,1,11/", b"99,2010000,1,10/"))
    with pytest.raises(BankFileError, match="ends with a file trailer"):
        parse_bai2(BAI2.replace(b"99,2010000,1,11/\n", b""))
    with pytest.raises(BankFileError, match="not a whole number"):
        parse_bai2(BAI2.replace(b"16,475,20000,", b"16,475,200.00,"))
