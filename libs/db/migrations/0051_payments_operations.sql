-- Payments, operations: refunds sent to processors, operators' commands (audit), disputes' money.

alter table payments.refunds add column charge_id text;       -- the processor's charge refunded
alter table payments.refunds add column sent_at timestamptz;  -- last send (a stale 'sending' is sent again, same key)

-- Every operator command (settle payments retry|refund, settle receipts apply), once per command id,
-- with who asked, why, and what it did.
create table payments.commands (
    command_id   text primary key,
    type         text        not null,
    renter_id    text        not null,
    requested_by text        not null,
    reason       text        not null,
    at           timestamptz not null,
    outcome      text        not null,
    event_id     text        not null,
    recorded_at  timestamptz not null default now()
);

-- A lost dispute writes the invoice's disputed amount off to dispute_losses: money "in" of its own kind
-- that the allocation applies to the disputed invoice (its reference), so the renter is not dunned for it.
alter table payments.money_in drop constraint money_in_kind_check;
alter table payments.money_in add constraint money_in_kind_check
    check (kind in ('receipt', 'collection', 'dispute_reversal', 'dispute_loss'));
