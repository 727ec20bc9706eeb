"""Payout rails (issue 10, R16): pure libraries that turn payouts into bank artefacts and read the
bank's answers. No I/O, no clock, no randomness: the same batch always gives the same bytes.

* :mod:`.port` — the rail port: :class:`~.port.PayoutInstruction`, :class:`~.port.PayoutBatch`,
  :class:`~.port.BuiltFile`, :class:`~.port.RailReturn` and the :class:`~.port.Rail` protocol.
* :mod:`.nacha` — ACH as a NACHA file (PPD/CCD), and a reader of returns (R-codes) and NOCs (C-codes).
* :mod:`.iso20022` — pain.001 (SEPA, wires), pacs.008 (RTP, FedNow), pacs.002/pain.002 rejects;
  every document validated against the official XSD (``xsd/``).
* :mod:`.payees` — check digits: ABA (python-stdnum), IBAN/BIC (schwifty), EIP-55 (eth-utils).
* :mod:`.stablecoin` — ERC-20 ``transfer`` call data per payout, and the signer's receipts as rejects.
* :mod:`.calendar` — FED and TARGET2 business days, cut-offs, effective dates, limits and fallback.
* :mod:`.statements` — bank statements (camt.053, BAI2) as bank lines in integer minor units (R17).
"""
