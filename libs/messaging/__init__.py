"""Exactly-once messaging on at-least-once Kafka: inbox (dedup), consume(), outbox, relay, dead letters.

Flow of one message::

    Kafka ──► consume(): decode ─► inbox claim ─► handler (state + ledger + outbox rows) ─► COMMIT ─► ack offsets
                                         │ duplicate: skip     │ permanent error: dead letter (own txn)
    outbox rows ──► relay (per topic-partition lane, in id order, idempotent producer, acks=all) ──► Kafka
"""
