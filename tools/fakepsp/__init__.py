"""fakepsp: our own fake payment processor — a real HTTP process speaking two dialects.

* :mod:`tools.fakepsp.stripe_api` — the Stripe API subset the Stripe adapter uses (``/v1``);
* :mod:`tools.fakepsp.ledgerpay_api` — LedgerPay, a second processor with other codes (``/ledgerpay/v1``);
* :mod:`tools.fakepsp.tokens` — the scripted outcome of each test token (the token table);
* :mod:`tools.fakepsp.webhooks` — signed, late, duplicated, out-of-order webhook delivery (seeded);
* :mod:`tools.fakepsp.state` — the books (deterministic ids, integer fees), optionally in a JSON file;
* :mod:`tools.fakepsp.server` — the aiohttp application, outage and latency, the admin API.

It is a test double of an external system: it knows no billing rule of Settle's.
"""
