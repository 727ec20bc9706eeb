"""Stablecoin payouts (R16): the ERC-20 transfer artefact, executed on an in-process chain.

The chain is eth-tester's py-evm backend (no network, no node). The token is a minimal ERC-20
subset (``transfer``, ``balanceOf``, ``decimals``, the ``Transfer`` event) written here in EVM
assembly: the listing below is assembled by a 30-line assembler and must give the committed bytecode,
so nothing is compiled or downloaded at run time. Its storage keeps a balance at the slot numbered by
the holder's address (not Solidity's layout; the interface is what the rail relies on).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from eth_abi import encode
from eth_tester import EthereumTester, PyEVMBackend
from eth_utils.crypto import keccak

from services.payouts.rails.port import (
    BankFileError,
    IbanAccount,
    InvalidBatchError,
    Payee,
    PayoutBatch,
    PayoutInstruction,
    WalletAccount,
)
from services.payouts.rails.stablecoin import TRANSFER_SELECTOR, StablecoinRail, TokenConfig, transfer_call_data

T = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()

_OPCODES = {
    "ADD": 0x01, "SUB": 0x03, "LT": 0x10, "EQ": 0x14, "SHR": 0x1C, "CALLER": 0x33, "CALLDATALOAD": 0x35,
    "CODECOPY": 0x39, "MSTORE": 0x52, "SLOAD": 0x54, "SSTORE": 0x55, "JUMPI": 0x57, "DUP1": 0x80, "DUP2": 0x81,
    "DUP3": 0x82, "SWAP1": 0x90, "LOG3": 0xA3, "RETURN": 0xF3, "REVERT": 0xFD,
}  # fmt: skip

RUNTIME = [
    # dispatch on the 4-byte selector
    "PUSH1 0", "CALLDATALOAD", "PUSH1 0xe0", "SHR",
    "DUP1", "PUSH4 0xa9059cbb", "EQ", "@transfer", "JUMPI",
    "DUP1", "PUSH4 0x70a08231", "EQ", "@balance", "JUMPI",
    "DUP1", "PUSH4 0x313ce567", "EQ", "@decimals", "JUMPI",
    "fail:", "PUSH1 0", "DUP1", "REVERT",
    "balance:", "PUSH1 4", "CALLDATALOAD", "SLOAD", "PUSH1 0", "MSTORE", "PUSH1 32", "PUSH1 0", "RETURN",
    "decimals:", "PUSH1 6", "PUSH1 0", "MSTORE", "PUSH1 32", "PUSH1 0", "RETURN",
    # transfer(to, amount): revert unless balance[caller] >= amount
    "transfer:", "PUSH1 0x24", "CALLDATALOAD", "CALLER", "SLOAD", "DUP2", "DUP2", "LT", "@fail", "JUMPI",
    "DUP2", "SWAP1", "SUB", "CALLER", "SSTORE",  # balance[caller] -= amount
    "PUSH1 4", "CALLDATALOAD", "DUP1", "SLOAD", "DUP3", "ADD", "SWAP1", "SSTORE",  # balance[to] += amount
    "PUSH1 0", "MSTORE", "PUSH1 4", "CALLDATALOAD", "CALLER", "PUSH32 " + TRANSFER_TOPIC, "PUSH1 32", "PUSH1 0",
    "LOG3",  # Transfer(caller, to, amount)
    "PUSH1 1", "PUSH1 0", "MSTORE", "PUSH1 32", "PUSH1 0", "RETURN",
]  # fmt: skip

TOKEN_RUNTIME_HEX = (
    "60003560e01c8063a9059cbb1461004457806370a082311461002c578063313ce56714610039575b600080fd5b6004355460005260"
    "206000f35b600660005260206000f35b6024353354818110610027578190033355600435805482019055600052600435337fddf252ad"
    "1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef60206000a3600160005260206000f3"
)


def assemble(listing: list[str]) -> bytes:
    """``OP``, ``PUSHn value``, ``label:`` (a JUMPDEST) and ``@label`` (PUSH2 of its offset); two passes."""

    def size(token: str) -> int:
        if token.startswith("@"):
            return 3
        if token.startswith("PUSH"):
            return 1 + int(token.split()[0][4:])
        return 1

    labels: dict[str, int] = {}
    position = 0
    for token in listing:
        if token.endswith(":"):
            labels[token[:-1]] = position
        position += size(token)
    out = bytearray()
    for token in listing:
        if token.endswith(":"):
            out.append(0x5B)
        elif token.startswith("@"):
            out += b"\x61" + labels[token[1:]].to_bytes(2, "big")
        elif token.startswith("PUSH"):
            op, value = token.split()
            width = int(op[4:])
            out += bytes([0x5F + width]) + int(value, 0).to_bytes(width, "big")
        else:
            out.append(_OPCODES[token])
    return bytes(out)


def creation_code(runtime: bytes, supply_units: int) -> bytes:
    """Constructor: balance[deployer] = supply, then return the runtime code (which follows it)."""

    def head(offset: int) -> list[str]:
        return [f"PUSH32 {supply_units}", "CALLER", "SSTORE", f"PUSH2 {len(runtime)}", "DUP1", f"PUSH2 {offset}",
                "PUSH1 0", "CODECOPY", "PUSH1 0", "RETURN"]  # fmt: skip

    return assemble(head(len(assemble(head(0))))) + runtime


@pytest.fixture
def chain() -> dict[str, Any]:
    tester = EthereumTester(PyEVMBackend())
    accounts = tester.get_accounts()
    supply = 10_000 * 10**6  # 10,000 tokens of 6 decimals, all held by accounts[0] (our hot wallet)
    tx = tester.send_transaction(
        {"from": accounts[0], "data": "0x" + creation_code(assemble(RUNTIME), supply).hex(), "gas": 500_000, "value": 0}
    )
    token = tester.get_transaction_receipt(tx)["contract_address"]
    assert tester.get_code(token) == "0x" + TOKEN_RUNTIME_HEX
    return {"tester": tester, "accounts": accounts, "token": token}


def balance_of(chain: dict[str, Any], holder: str) -> int:
    data = "0x70a08231" + encode(["address"], [holder]).hex()
    return int(
        chain["tester"].call(
            {"from": chain["accounts"][0], "to": chain["token"], "data": data, "value": 0, "gas": 100_000}
        ),
        16,
    )


def rail_for(chain: dict[str, Any]) -> StablecoinRail:
    return StablecoinRail(TokenConfig("ethereum", 131277322940537, chain["token"], chain["accounts"][0]))


def payout(n: int, to: str, amount_minor: int) -> PayoutInstruction:
    return PayoutInstruction(f"po-{n}", f"Supplier {n}", WalletAccount(to), amount_minor, "USD", date(2026, 12, 7), "")


def test_committed_bytecode_is_the_listing() -> None:
    assert assemble(RUNTIME).hex() == TOKEN_RUNTIME_HEX


def test_call_data_is_abi_encoding() -> None:
    to = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert TRANSFER_SELECTOR.hex() == "a9059cbb"
    assert transfer_call_data(to, 12_340_000) == TRANSFER_SELECTOR + encode(["address", "uint256"], [to, 12_340_000])


def test_artefact_executed_on_chain_pays_every_payee_and_a_revert_is_a_reject(chain: dict[str, Any]) -> None:
    accounts = chain["accounts"]
    rail = rail_for(chain)
    items = (payout(1, accounts[1], 123_45), payout(2, accounts[2], 1), payout(3, accounts[3], 2_000_000_00))
    built = rail.build(PayoutBatch("sc-1", T, items))
    assert built.content == rail.build(PayoutBatch("sc-1", T, tuple(reversed(items)))).content
    document = json.loads(built.content)
    assert document["from"] == accounts[0] and document["token"] == chain["token"]
    assert [t["amount_units"] for t in document["transfers"]] == ["123450000", "10000", "2000000000000"]
    # the signer: one transaction per transfer, in the artefact's order; it reports one receipt each
    receipts = []
    for transfer in document["transfers"]:
        tx = chain["tester"].send_transaction(
            {"from": document["from"], "to": document["token"], "data": transfer["data"], "gas": 100_000, "value": 0}
        )
        receipt = chain["tester"].get_transaction_receipt(tx)
        receipts.append({"payout_id": transfer["payout_id"], "transaction_hash": tx, "status": receipt["status"]})
        if receipt["status"] == 1:
            [log] = receipt["logs"]
            assert log["topics"][0] == TRANSFER_TOPIC and int(log["data"], 16) == int(transfer["amount_units"])
            assert log["topics"][2] == "0x" + encode(["address"], [transfer["to"]]).hex()
    assert balance_of(chain, accounts[1]) == 123_45 * 10**4
    assert balance_of(chain, accounts[2]) == 1 * 10**4
    assert balance_of(chain, accounts[3]) == 0  # $2,000,000 is over the wallet's 10,000 tokens: reverted
    assert balance_of(chain, accounts[0]) == 10_000 * 10**6 - 123_46 * 10**4
    [reject] = rail.parse_returns(json.dumps(receipts).encode())
    assert (reject.kind, reject.code, reject.payout_id) == ("reject", "REVERTED", "po-3")
    assert reject.rail_reference == receipts[2]["transaction_hash"]


def test_validation_and_refusals(chain: dict[str, Any]) -> None:
    rail = rail_for(chain)
    accounts = chain["accounts"]
    assert rail.validate(Payee("X", WalletAccount(accounts[1]))) == []
    assert rail.validate(Payee("X", WalletAccount(accounts[1], network="polygon"))) == [
        "wallet on polygon, the token is on ethereum"
    ]
    assert rail.validate(Payee("X", WalletAccount(accounts[1].lower())))[0].endswith("(or the checksum is wrong)")
    assert rail.validate(Payee("X", IbanAccount("DE89370400440532013000"))) == [
        "stablecoin payouts go to wallet addresses only"
    ]
    assert rail.validate(Payee("X", WalletAccount(chain["token"]))) == [
        "the recipient is the token contract or our own wallet"
    ]
    with pytest.raises(InvalidBatchError, match="carries USD"):
        rail.build(
            PayoutBatch(
                "b", T, (PayoutInstruction("p", "X", WalletAccount(accounts[1]), 1, "EUR", date(2026, 12, 7), ""),)
            )
        )
    with pytest.raises(InvalidBatchError, match="decimals"):
        TokenConfig("ethereum", 1, chain["token"], accounts[0], decimals=2, currency="KWD")
    with pytest.raises(BankFileError):
        rail.parse_returns(b"[{}]")
    with pytest.raises(BankFileError):
        rail.parse_returns(b"nope")
