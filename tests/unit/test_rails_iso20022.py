"""ISO 20022 payout messages (R16): pain.001 (SEPA, wires), pacs.008 (RTP/FedNow), pacs.002/pain.002 rejects.

Every built document is checked here against the official XSD a second time (independently of the
writer's own check), then read back with plain XPath on the namespace to compare field by field.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from services.payouts.rails.iso20022 import (
    PACS008,
    PAIN001,
    Debtor,
    InstantRail,
    Pain001Rail,
    format_amount,
    message_id,
    read_status_report,
    requested_dates,
    schema,
    uetr,
)
from services.payouts.rails.port import (
    BankFileError,
    IbanAccount,
    InvalidBatchError,
    Payee,
    PayoutBatch,
    PayoutInstruction,
    UsBankAccount,
    WalletAccount,
)

T = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)
EU_DEBTOR = Debtor("Settle Europe GmbH", IbanAccount("DE89370400440532013000", "COBADEFFXXX"))
US_DEBTOR = Debtor("Settle Inc", UsBankAccount("021000021", "123456789"))
SEPA_IBANS = ["FR1420041010050500013M02606", "NL91ABNA0417164300", "ES9121000418450200051332", "BE68539007547034"]


def sepa(
    n: int, amount: int, *, day: int = 8, name: str = "Fournisseur Élégant", reference: str = ""
) -> PayoutInstruction:
    return PayoutInstruction(
        f"po-{n:04d}", name, IbanAccount(SEPA_IBANS[n % 4]), amount, "EUR", date(2026, 12, day), reference
    )


def xpath(content: bytes, path: str, ns: str) -> list[str]:
    root = etree.fromstring(content)
    return [e.text if isinstance(e, etree._Element) else str(e) for e in root.xpath(path, namespaces={"d": ns})]


def test_sepa_pain001_is_valid_and_carries_every_payout() -> None:
    items = (sepa(1, 123_45, reference="Payout 2026-11 ✓"), sepa(2, 1, day=9), sepa(3, 99_999_99))
    built = Pain001Rail(EU_DEBTOR, scheme="sepa").build(PayoutBatch("batch-2026-12-07-eu", T, items))
    document = etree.fromstring(built.content)
    assert schema("pain.001.001.09").validate(document)
    assert xpath(built.content, "/d:Document/d:CstmrCdtTrfInitn/d:GrpHdr/d:MsgId", PAIN001) == ["batch-2026-12-07-eu"]
    assert xpath(built.content, "//d:GrpHdr/d:CreDtTm", PAIN001) == ["2026-12-07T16:00:00Z"]
    assert xpath(built.content, "//d:GrpHdr/d:NbOfTxs", PAIN001) == ["3"]
    assert Decimal(xpath(built.content, "//d:GrpHdr/d:CtrlSum", PAIN001)[0]) == Decimal("100123.45")
    # one PmtInf per requested date, SEPA service level, SLEV charges
    assert requested_dates(built.content) == [date(2026, 12, 8), date(2026, 12, 9)]
    assert set(xpath(built.content, "//d:PmtTpInf/d:SvcLvl/d:Cd", PAIN001)) == {"SEPA"}
    assert set(xpath(built.content, "//d:PmtInf/d:ChrgBr", PAIN001)) == {"SLEV"}
    assert xpath(built.content, "//d:CdtTrfTxInf/d:PmtId/d:EndToEndId", PAIN001) == ["po-0001", "po-0003", "po-0002"]
    assert xpath(built.content, "//d:CdtTrfTxInf/d:Amt/d:InstdAmt", PAIN001) == ["123.45", "99999.99", "0.01"]
    assert set(xpath(built.content, "//d:InstdAmt/@Ccy", PAIN001)) == {"EUR"}
    # SEPA's Latin character set: accents folded, other symbols dropped
    assert set(xpath(built.content, "//d:Cdtr/d:Nm", PAIN001)) == {"Fournisseur Elegant"}
    assert xpath(built.content, "//d:RmtInf/d:Ustrd", PAIN001) == ["Payout 2026-11"]
    assert xpath(built.content, "//d:CdtrAgt/d:FinInstnId/d:Othr/d:Id", PAIN001) == ["NOTPROVIDED"] * 3
    assert built.references == {"po-0001": "po-0001", "po-0002": "po-0002", "po-0003": "po-0003"}
    assert (built.count, built.total_minor, built.currency) == (3, 100_123_45, "EUR")


def test_rebuild_is_byte_identical_and_order_free() -> None:
    items = [sepa(n, 100 * n + 1, day=8 + n % 3) for n in range(1, 25)]
    rail = Pain001Rail(EU_DEBTOR, scheme="sepa")
    a = rail.build(PayoutBatch("b", T, tuple(items)))
    b = rail.build(PayoutBatch("b", T, tuple(reversed(items))))
    assert a.content == b.content and a.file_id == b.file_id == "pain001-b"


def test_wire_pain001_in_several_currencies_and_account_kinds() -> None:
    items = (
        PayoutInstruction(
            "w1",
            "Acme Ltd",
            IbanAccount("GB29NWBK60161331926819", "NWBKGB2L"),
            1_000_00,
            "GBP",
            date(2026, 12, 8),
            "inv 7",
        ),
        PayoutInstruction(
            "w2",
            "株式会社アクメ",
            IbanAccount("DE89370400440532013000", "COBADEFFXXX"),
            5_000,
            "JPY",
            date(2026, 12, 8),
            "",
        ),
        PayoutInstruction(
            "w3",
            "Acme Kuwait",
            IbanAccount("DE89370400440532013000", "COBADEFFXXX"),
            1_234,
            "KWD",
            date(2026, 12, 8),
            "",
        ),
        PayoutInstruction("w4", "Acme US", UsBankAccount("011000015", "42"), 5_000_00, "USD", date(2026, 12, 9), ""),
    )
    built = Pain001Rail(US_DEBTOR, scheme="wire").build(PayoutBatch("wires-1", T, items))
    assert schema("pain.001.001.09").validate(etree.fromstring(built.content))
    amounts = dict(
        zip(xpath(built.content, "//d:EndToEndId", PAIN001), xpath(built.content, "//d:InstdAmt", PAIN001), strict=True)
    )
    assert amounts == {"w1": "1000.00", "w2": "5000", "w3": "1.234", "w4": "5000.00"}
    assert set(xpath(built.content, "//d:PmtInf/d:ChrgBr", PAIN001)) == {"SHAR"}
    assert xpath(built.content, "//d:PmtTpInf", PAIN001) == []  # no SEPA service level on wires
    assert "株式会社アクメ" in xpath(built.content, "//d:Cdtr/d:Nm", PAIN001)  # wires keep Unicode names
    assert xpath(built.content, "//d:CdtTrfTxInf[d:PmtId/d:EndToEndId='w4']/d:CdtrAgt//d:MmbId", PAIN001) == [
        "011000015"
    ]
    assert len(xpath(built.content, "//d:PmtInf", PAIN001)) == 4  # (date, currency) groups
    assert built.currency == "" and built.total_minor == 0  # mixed currencies have no single total


def test_instant_pacs008_valid_one_transaction_per_message() -> None:
    item = PayoutInstruction(
        "po-77",
        "Jane Supplier",
        UsBankAccount("011000015", "987654321"),
        2_500_00,
        "USD",
        date(2026, 12, 7),
        "Nov payout",
    )
    built = InstantRail(US_DEBTOR, name="fednow").build(PayoutBatch("fn-po-77", T, (item,)))
    assert schema("pacs.008.001.08").validate(etree.fromstring(built.content))
    assert xpath(built.content, "//d:GrpHdr/d:NbOfTxs", PACS008) == ["1"]
    assert xpath(built.content, "//d:GrpHdr/d:TtlIntrBkSttlmAmt", PACS008) == ["2500.00"]
    assert xpath(built.content, "//d:SttlmInf/d:SttlmMtd", PACS008) == ["CLRG"]
    assert xpath(built.content, "//d:SttlmInf/d:ClrSys/d:Prtry", PACS008) == ["FDN"]
    assert xpath(built.content, "//d:PmtId/d:UETR", PACS008) == [uetr("po-77")]
    assert xpath(built.content, "//d:CdtrAgt//d:MmbId", PACS008) == ["011000015"]
    assert xpath(built.content, "//d:DbtrAgt//d:MmbId", PACS008) == ["021000021"]
    assert xpath(built.content, "//d:CdtrAcct/d:Id/d:Othr/d:Id", PACS008) == ["987654321"]
    with pytest.raises(InvalidBatchError, match="at most 1"):
        InstantRail(US_DEBTOR, name="rtp").build(PayoutBatch("x", T, (item, replace(item, payout_id="po-78"))))
    rtp = InstantRail(US_DEBTOR, name="rtp", max_per_message=2).build(
        PayoutBatch("x", T, (item, replace(item, payout_id="po-78")))
    )
    assert xpath(rtp.content, "//d:ClrSys/d:Prtry", PACS008) == ["TCH"] and rtp.total_minor == 5_000_00
    with pytest.raises(InvalidBatchError, match="one interbank settlement date"):
        InstantRail(US_DEBTOR, name="rtp", max_per_message=2).build(
            PayoutBatch("x", T, (item, replace(item, payout_id="po-78", effective_date=date(2026, 12, 8))))
        )


def test_uetr_is_stable_and_version_4_shaped() -> None:
    assert uetr("po-1") == uetr("po-1") != uetr("po-2")
    assert uetr("po-1")[14] == "4" and uetr("po-1")[19] in "89ab"


def test_refusals() -> None:
    sepa_rail = Pain001Rail(EU_DEBTOR, scheme="sepa")
    with pytest.raises(InvalidBatchError, match="EUR only"):
        sepa_rail.build(PayoutBatch("b", T, (replace(sepa(1, 100), currency="USD"),)))
    with pytest.raises(InvalidBatchError, match="Max35Text"):
        sepa_rail.build(PayoutBatch("b", T, (replace(sepa(1, 100), payout_id="p" * 36),)))
    assert sepa_rail.validate(Payee("X", IbanAccount("BR1800360305000010009795493C1"))) == [
        "IBAN BR1800360305000010009795493C1: its country is outside the SEPA scheme"
    ]
    assert sepa_rail.validate(Payee("X", UsBankAccount("011000015", "1"))) == ["SEPA pays IBAN accounts only"]
    wire = Pain001Rail(US_DEBTOR, scheme="wire")
    assert wire.validate(Payee("X", IbanAccount("GB29NWBK60161331926819"))) == [
        "a wire to an IBAN needs the beneficiary bank's BIC"
    ]
    assert wire.validate(Payee("X", WalletAccount("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"))) == [
        "wires pay bank accounts only"
    ]
    with pytest.raises(InvalidBatchError, match="checksum"):
        sepa_rail.build(
            PayoutBatch("b", T, (replace(sepa(1, 100), account=IbanAccount("FR1420041010050500013M02607")),))
        )
    with pytest.raises(InvalidBatchError, match="USD only"):
        InstantRail(US_DEBTOR, name="rtp").build(
            PayoutBatch(
                "b", T, (PayoutInstruction("p", "N", UsBankAccount("011000015", "1"), 1, "EUR", date(2026, 12, 7), ""),)
            )
        )


def test_the_xsd_check_is_real() -> None:
    built = Pain001Rail(EU_DEBTOR, scheme="sepa").build(PayoutBatch("b", T, (sepa(1, 100),)))
    broken = built.content.replace(b"<PmtMtd>TRF</PmtMtd>", b"<PmtMtd>WIRE</PmtMtd>")
    assert not schema("pain.001.001.09").validate(etree.fromstring(broken))


def test_message_id_fits_max35() -> None:
    assert message_id("short") == "short"
    long_id = message_id("batch-" + "x" * 60)
    assert len(long_id) == 35 and long_id == message_id("batch-" + "x" * 60) and long_id.startswith("B")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=10**13), min_size=1, max_size=30),
    st.sampled_from(["EUR", "JPY", "KWD", "USD", "CLF"]),
)
def test_property_amounts_are_exact_and_sum_to_ctrlsum(amounts: list[int], currency: str) -> None:
    exponent = {"EUR": 2, "JPY": 0, "KWD": 3, "USD": 2, "CLF": 4}[currency]
    items = tuple(
        PayoutInstruction(
            f"p{n}", "Acme", IbanAccount("DE89370400440532013000", "COBADEFFXXX"), a, currency, date(2026, 12, 8), ""
        )
        for n, a in enumerate(amounts)
    )
    built = Pain001Rail(EU_DEBTOR, scheme="wire").build(PayoutBatch("b", T, items))
    written = [Decimal(t) for t in xpath(built.content, "//d:InstdAmt", PAIN001)]
    assert sorted(int(w.scaleb(exponent)) for w in written) == sorted(amounts)
    assert Decimal(xpath(built.content, "//d:GrpHdr/d:CtrlSum", PAIN001)[0]) == sum(written)
    assert format_amount(sum(amounts), currency) == xpath(built.content, "//d:GrpHdr/d:CtrlSum", PAIN001)[0]


PACS002 = b"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.002.001.10">
  <FIToFIPmtStsRpt>
    <GrpHdr><MsgId>STS-1</MsgId><CreDtTm>2026-12-07T16:00:05Z</CreDtTm></GrpHdr>
    <OrgnlGrpInfAndSts><OrgnlMsgId>fn-po-77</OrgnlMsgId><OrgnlMsgNmId>pacs.008.001.08</OrgnlMsgNmId></OrgnlGrpInfAndSts>
    <TxInfAndSts>
      <OrgnlEndToEndId>po-77</OrgnlEndToEndId><OrgnlTxId>po-77</OrgnlTxId><TxSts>RJCT</TxSts>
      <StsRsnInf><Rsn><Cd>AC04</Cd></Rsn></StsRsnInf>
      <OrgnlTxRef><IntrBkSttlmAmt Ccy="USD">2500.00</IntrBkSttlmAmt></OrgnlTxRef>
    </TxInfAndSts>
    <TxInfAndSts>
      <OrgnlEndToEndId>po-78</OrgnlEndToEndId><TxSts>ACSC</TxSts>
    </TxInfAndSts>
    <TxInfAndSts>
      <OrgnlEndToEndId>po-79</OrgnlEndToEndId><TxSts>RJCT</TxSts>
      <StsRsnInf><Rsn><Prtry>X99</Prtry></Rsn><AddtlInf>creditor bank</AddtlInf><AddtlInf>offline</AddtlInf></StsRsnInf>
    </TxInfAndSts>
  </FIToFIPmtStsRpt>
</Document>"""

PAIN002 = b"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.10">
  <CstmrPmtStsRpt>
    <GrpHdr><MsgId>PSR-9</MsgId><CreDtTm>2026-12-08T07:00:00Z</CreDtTm></GrpHdr>
    <OrgnlGrpInfAndSts><OrgnlMsgId>batch-2026-12-07-eu</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.09</OrgnlMsgNmId><GrpSts>PART</GrpSts></OrgnlGrpInfAndSts>
    <OrgnlPmtInfAndSts>
      <OrgnlPmtInfId>batch-2026-12-07-eu-000001</OrgnlPmtInfId>
      <TxInfAndSts>
        <OrgnlEndToEndId>po-0003</OrgnlEndToEndId><TxSts>RJCT</TxSts>
        <StsRsnInf><Rsn><Cd>AM04</Cd></Rsn></StsRsnInf>
        <OrgnlTxRef><Amt><InstdAmt Ccy="EUR">99999.99</InstdAmt></Amt></OrgnlTxRef>
      </TxInfAndSts>
    </OrgnlPmtInfAndSts>
    <OrgnlPmtInfAndSts>
      <OrgnlPmtInfId>batch-2026-12-07-eu-000002</OrgnlPmtInfId><PmtInfSts>RJCT</PmtInfSts>
      <StsRsnInf><Rsn><Cd>FF01</Cd></Rsn></StsRsnInf>
    </OrgnlPmtInfAndSts>
  </CstmrPmtStsRpt>
</Document>"""


def test_pacs002_rejects() -> None:
    found = InstantRail(US_DEBTOR, name="fednow").parse_returns(PACS002)
    assert [(r.kind, r.code, r.payout_id, r.amount_minor, r.reason) for r in found] == [
        ("acknowledgement", "", None, None, "status report"),  # no group status: the message arrived
        ("reject", "AC04", "po-77", 2_500_00, "closed account number"),
        ("reject", "X99", "po-79", None, "creditor bank offline"),
    ]
    assert {r.original_message_id for r in found} == {"fn-po-77"}


def test_pain002_rejects_by_transaction_and_by_block() -> None:
    found = read_status_report(PAIN002)
    assert [(r.kind, r.code, r.rail_reference, r.payout_id, r.amount_minor) for r in found] == [
        ("acknowledgement", "PART", "batch-2026-12-07-eu", None, None),
        ("reject", "FF01", "batch-2026-12-07-eu-000002", None, None),
        ("reject", "AM04", "po-0003", "po-0003", 99_999_99),
    ]


def test_a_report_that_accepts_the_message_acknowledges_it_and_returns_nothing() -> None:
    accepted = PAIN002.split(b"<OrgnlPmtInfAndSts>")[0].replace(b"PART", b"ACTC") + b"</CstmrPmtStsRpt></Document>"
    found = read_status_report(accepted)
    assert [(r.kind, r.code, r.rail_reference, r.original_message_id) for r in found] == [
        ("acknowledgement", "ACTC", "batch-2026-12-07-eu", "batch-2026-12-07-eu")
    ]
    assert found[0].reason == "status report: group status ACTC"


def test_group_reject_and_garbage() -> None:
    whole = PACS002.replace(
        b"<OrgnlMsgNmId>pacs.008.001.08</OrgnlMsgNmId>",
        b"<OrgnlMsgNmId>pacs.008.001.08</OrgnlMsgNmId><GrpSts>RJCT</GrpSts><StsRsnInf><Rsn><Cd>FF01</Cd></Rsn></StsRsnInf>",
    )
    first = read_status_report(whole)[0]
    assert (first.kind, first.code, first.rail_reference, first.payout_id) == ("reject", "FF01", "fn-po-77", None)
    assert "acknowledgement" not in {r.kind for r in read_status_report(whole)}, "a rejected message is not acked"
    with pytest.raises(BankFileError, match="well-formed"):
        read_status_report(b"<Document>")
    with pytest.raises(BankFileError, match="status report"):
        read_status_report(b'<Document xmlns="urn:x"><Other/></Document>')
    # entities are not expanded: no external file (or billion laughs) gets into what we read
    evil = (
        b'<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.002.001.10"><FIToFIPmtStsRpt>'
        b"<TxInfAndSts><OrgnlEndToEndId>&e;</OrgnlEndToEndId><TxSts>RJCT</TxSts></TxInfAndSts>"
        b"</FIToFIPmtStsRpt></Document>"
    )
    assert [r.rail_reference for r in read_status_report(evil)] == [""]
