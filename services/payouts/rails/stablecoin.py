"""Stablecoin payouts (R16): ERC-20 ``transfer`` calls, one per payout, as a deterministic artefact.

The artefact is canonical JSON (sorted keys, no spaces, UTF-8) listing, per payout, the recipient,
the amount in the token's base units and the ``transfer(address,uint256)`` call data (4-byte
selector + two 32-byte ABI words). Nothing here signs, estimates gas, picks nonces or broadcasts:
those depend on the chain's state and belong to the signer that executes the artefact. The signer
reports back one receipt per payout; :meth:`StablecoinRail.parse_returns` turns a failed one
(``status`` 0: the call reverted) into a ``reject``.

Amounts: a payout of ``amount_minor`` in ``currency`` (e.g. USD cents) is ``amount_minor × 10^(token
decimals − ISO 4217 exponent)`` base units (USDC has 6 decimals: 1 cent = 10,000 units). A token with
fewer decimals than the currency cannot carry every amount and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from eth_utils.crypto import keccak

from libs.money import currency_exponent
from services.payouts.rails.payees import check_payee, check_wallet_address
from services.payouts.rails.port import (
    BankFileError,
    BuiltFile,
    InvalidBatchError,
    Payee,
    PayoutBatch,
    RailReturn,
    WalletAccount,
)

__all__ = ["TRANSFER_SELECTOR", "StablecoinRail", "TokenConfig", "transfer_call_data"]

TRANSFER_SELECTOR = keccak(text="transfer(address,uint256)")[:4]
"""``0xa9059cbb``: the first 4 bytes of Keccak-256 of the function's signature."""

MAX_TRANSFERS = 10_000
"""Per artefact: each is its own transaction, so a batch is a queue for the signer, kept bounded."""


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """The token we pay in and the wallet it leaves from (EIP-55 addresses)."""

    network: str
    chain_id: int
    token_address: str
    sender_address: str
    decimals: int = 6
    currency: str = "USD"

    def __post_init__(self) -> None:
        problems = check_wallet_address(self.token_address) + check_wallet_address(self.sender_address)
        if problems:
            raise InvalidBatchError("stablecoin token configuration: " + "; ".join(problems))
        if self.decimals < currency_exponent(self.currency):
            raise InvalidBatchError(f"a token with {self.decimals} decimals cannot carry every {self.currency} amount")


def transfer_call_data(recipient: str, amount_units: int) -> bytes:
    """ABI-encoded ``transfer(recipient, amount_units)``."""
    assert 0 < amount_units < 2**256
    address = bytes.fromhex(recipient.removeprefix("0x"))
    assert len(address) == 20
    return TRANSFER_SELECTOR + address.rjust(32, b"\0") + amount_units.to_bytes(32, "big")


class StablecoinRail:
    name = "stablecoin"
    max_per_file = MAX_TRANSFERS

    def __init__(self, token: TokenConfig) -> None:
        self.token = token

    def validate(self, payee: Payee) -> list[str]:
        problems = check_payee(payee)
        account = payee.account
        if not isinstance(account, WalletAccount):
            problems.append("stablecoin payouts go to wallet addresses only")
        elif account.network != self.token.network:
            problems.append(f"wallet on {account.network}, the token is on {self.token.network}")
        elif account.address.lower() in (self.token.token_address.lower(), self.token.sender_address.lower()):
            problems.append("the recipient is the token contract or our own wallet")
        return problems

    def build(self, batch: PayoutBatch) -> BuiltFile:
        if len(batch.instructions) > MAX_TRANSFERS:
            raise InvalidBatchError(f"batch {batch.batch_id}: over {MAX_TRANSFERS} transfers in one artefact")
        scale = 10 ** (self.token.decimals - currency_exponent(self.token.currency))
        transfers = []
        for i in sorted(batch.instructions, key=lambda i: i.payout_id):
            if i.currency != self.token.currency:
                raise InvalidBatchError(
                    f"payout {i.payout_id}: the token carries {self.token.currency}, not {i.currency}"
                )
            problems = self.validate(i.payee)
            if problems:
                raise InvalidBatchError(f"payout {i.payout_id}: " + "; ".join(problems))
            assert isinstance(i.account, WalletAccount)
            units = i.amount_minor * scale
            transfers.append(
                {
                    "payout_id": i.payout_id,
                    "to": i.account.address,
                    "amount_units": str(units),  # a string: JSON readers must never see a float
                    "data": "0x" + transfer_call_data(i.account.address, units).hex(),
                }
            )
        document = {
            "format": "settle.erc20-transfers.v1",
            "batch_id": batch.batch_id,
            "created_at": batch.created_at.isoformat(),
            "network": self.token.network,
            "chain_id": self.token.chain_id,
            "token": self.token.token_address,
            "from": self.token.sender_address,
            "transfers": transfers,
        }
        content = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return BuiltFile(
            file_id=f"erc20-{self.token.chain_id}-{batch.batch_id}",
            content=content,
            references={t["payout_id"]: t["payout_id"] for t in transfers},
            count=len(transfers),
            total_minor=sum(i.amount_minor for i in batch.instructions),
            currency=self.token.currency,
            media_type="application/json",
        )

    def parse_returns(self, content: bytes) -> list[RailReturn]:
        """The signer's receipts: ``[{"payout_id", "transaction_hash", "status": 1|0}, …]``; status 0
        (reverted on chain) is a reject with code ``REVERTED``. A confirmed transfer cannot come back."""
        try:
            receipts = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BankFileError(f"receipts are not JSON: {exc}") from exc
        if not isinstance(receipts, list) or not all(
            isinstance(r, dict) and isinstance(r.get("payout_id"), str) and r.get("status") in (0, 1) for r in receipts
        ):
            raise BankFileError("receipts must be a list of {payout_id, transaction_hash, status 0|1}")
        return [
            RailReturn(
                "reject",
                "REVERTED",
                str(r.get("transaction_hash") or r["payout_id"]),
                "the token transfer reverted on chain",
                payout_id=r["payout_id"],
            )
            for r in receipts
            if r["status"] == 0
        ]
