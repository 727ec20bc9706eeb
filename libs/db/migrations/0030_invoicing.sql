-- invoicing: period close per contract (R1, R3, R5-R7, R10), credit notes, supplier statements (R12).
-- Documents are immutable once finalized (the database refuses UPDATE/DELETE/TRUNCATE of their rows)
-- and numbered gapless per series (a counter row locked in the transaction that inserts the document).
create schema if not exists invoicing;

-- The projection of contracts.v1 (services.contracts.store.PROJECTION_DDL, schema "invoicing").
create table invoicing.contracts (
    contract_id text primary key,
    renter_id   text        not null,
    currency    text        not null,
    billing_mode text       not null,
    partition   int         not null,
    terms       jsonb       not null,
    updated_at  timestamptz not null default now()
);
create index on invoicing.contracts (partition);
create table invoicing.contract_events_held (
    event_id    text primary key,
    contract_id text        not null,
    type        text        not null,
    time        timestamptz not null,
    data        jsonb       not null,
    held_at     timestamptz not null default now()
);
create index on invoicing.contract_events_held (contract_id);

-- Every charges.watermark seen, per partition of charges.rated.v1 (only forward moves are kept).
-- The current watermark is the largest; the history makes the finalization instant deterministic:
-- a period is finalized at the FIRST watermark that reached its end.
create table invoicing.watermarks (
    partition   int         not null check (partition >= 0),
    through     timestamptz not null,
    recorded_at timestamptz not null default now(),
    primary key (partition, through)
);

-- Close progress per contract: where the background closer finds its work (one row per contract).
create table invoicing.contract_state (
    contract_id          text        primary key,
    partition            int         not null check (partition >= 0),
    next_period_start    timestamptz,
    -- End of the next period to invoice; null when every period of the term is invoiced.
    next_close_at        timestamptz,
    -- The partition's watermark when the contract arrived (a late contract is closed "then", R1).
    arrived_through      timestamptz,
    -- End of the last invoiced period.
    invoiced_through     timestamptz,
    last_invoice_number  text,
    -- Credit carried from the last invoice to the next one (R10), minor units.
    credit_carried_minor bigint      not null default 0 check (credit_carried_minor >= 0),
    credit_notes_issued  int         not null default 0 check (credit_notes_issued >= 0),
    -- Set when the close broke a billing rule (or hit a bug): the contract waits for an operator.
    blocked_reason       text,
    updated_at           timestamptz not null default now()
);
create index contract_state_due on invoicing.contract_state (partition, next_close_at)
    where next_close_at is not null and blocked_reason is null;

-- Rated charges (charge.rated), kept until a document carries them. Amounts *_x3600 are exact;
-- *_units are what rating accrued in the ledger for them (round_ledger of the exact amount).
create table invoicing.charges (
    charge_id               text        primary key,
    event_id                text        not null,
    contract_id             text        not null,
    renter_id               text        not null,
    supplier_id             text        not null,
    allocation_id           text        not null,
    currency                text        not null,
    meter                   text        not null,
    hour_start              timestamptz not null,
    period_start            timestamptz not null,
    period_end              timestamptz not null,
    charge_x3600            numeric     not null,
    earning_x3600           numeric     not null,
    accrued_units           numeric(38, 0) not null,
    earning_units           numeric(38, 0) not null,
    provisioned_gpu_seconds bigint      not null,
    billable_gpu_seconds    bigint      not null,
    maintenance_gpu_seconds bigint      not null,
    outage_gpu_seconds      bigint      not null,
    -- Rated after its period's watermark had passed (a late correction, R3).
    late                    boolean     not null,
    -- The invoice or credit note that carried the charge (null: not invoiced yet).
    document_id             text,
    -- The statement month ("YYYY-MM") that carried its earning (null: not on a statement yet).
    stated_month            text,
    received_at             timestamptz not null default now()
);
create index charges_open on invoicing.charges (contract_id, period_start) where document_id is null;
create index charges_period on invoicing.charges (contract_id, period_start);
create index charges_unstated on invoicing.charges (supplier_id, currency) where stated_month is null;

-- Prepaid wallet draws (wallet.drawn), kept until a document applies them (R8, R10).
create table invoicing.draws (
    draw_id      text        primary key,
    event_id     text        not null,
    contract_id  text        not null,
    currency     text        not null,
    period_start timestamptz not null,
    period_end   timestamptz not null,
    drawn_x3600  numeric     not null,
    reason       text        not null,
    at           timestamptz not null,
    late         boolean     not null,
    document_id  text,
    received_at  timestamptz not null default now()
);
create index draws_open on invoicing.draws (contract_id, period_start) where document_id is null;

-- Contracts that received a late charge or draw: the closer looks at them (a credit note when no
-- later invoice of the contract will come). ``through``: the partition's watermark at the time.
create table invoicing.late_work (
    contract_id text        primary key,
    through     timestamptz not null
);

-- Gapless number series (INV-2026, CN-2026, STM-2026): the row is locked by the transaction that
-- inserts the documents, so a rolled-back close gives its numbers back.
create table invoicing.number_series (
    series      text primary key check (series ~ '^(INV|CN|STM)-[0-9]{4}$'),
    last_number int  not null check (last_number between 0 and 999999)
);

-- Finalized invoices: one per contract per period (R10). ``document`` is the invoice.finalized data.
create table invoicing.invoices (
    invoice_id       text        primary key,
    number           text        not null unique check (number ~ '^INV-[0-9]{4}-[0-9]{6}$'),
    status           text        not null default 'finalized' check (status in ('finalized')),
    contract_id      text        not null,
    renter_id        text        not null,
    currency         text        not null,
    period_start     timestamptz not null,
    period_end       timestamptz not null,
    issued_at        timestamptz not null,
    total_minor      bigint      not null,
    amount_due_minor bigint      not null check (amount_due_minor >= 0),
    document         jsonb       not null,
    created_at       timestamptz not null default now(),
    unique (contract_id, period_start)
);
create index invoices_renter on invoicing.invoices (renter_id);

-- What documents have billed so far per invoiced period (mutable aggregates, not documents):
-- the true-up and SLA credit a late correction is measured against (R3, R5, R7).
create table invoicing.periods (
    contract_id      text        not null,
    period_start     timestamptz not null,
    period_end       timestamptz not null,
    invoice_id       text        not null references invoicing.invoices (invoice_id),
    true_up_minor    bigint      not null,
    sla_credit_minor bigint      not null check (sla_credit_minor <= 0),
    primary key (contract_id, period_start)
);

-- Credit notes: corrections after the contract's last invoice. ``document``: credit_note.issued data.
create table invoicing.credit_notes (
    credit_note_id text        primary key,
    number         text        not null unique check (number ~ '^CN-[0-9]{4}-[0-9]{6}$'),
    status         text        not null default 'finalized' check (status in ('finalized')),
    contract_id    text        not null,
    renter_id      text        not null,
    currency       text        not null,
    invoice_number text        not null,
    issued_at      timestamptz not null,
    document       jsonb       not null,
    created_at     timestamptz not null default now()
);
create index credit_notes_contract on invoicing.credit_notes (contract_id);

-- SLA credits passed on to suppliers (R7, R12): one row per allocation per document, signed as on
-- the statement (negative = charged back). ``month``: where it lands; ``stated_month``: where it did.
create table invoicing.chargebacks (
    id            bigint      generated always as identity primary key,
    document_id   text        not null,
    contract_id   text        not null,
    period_start  timestamptz not null,
    period_end    timestamptz not null,
    allocation_id text        not null,
    supplier_id   text        not null,
    currency      text        not null,
    month         text        not null check (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    amount_minor  bigint      not null,
    stated_month  text
);
create index chargebacks_period on invoicing.chargebacks (contract_id, period_start);
create index chargebacks_unstated on invoicing.chargebacks (supplier_id, currency) where stated_month is null;

-- Supplier statements per supplier, currency and calendar month (R12).
create table invoicing.statements (
    statement_id text        primary key,
    number       text        not null unique check (number ~ '^STM-[0-9]{4}-[0-9]{6}$'),
    status       text        not null default 'finalized' check (status in ('finalized')),
    supplier_id  text        not null,
    currency     text        not null,
    month        text        not null check (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    issued_at    timestamptz not null,
    net_minor    bigint      not null,
    document     jsonb       not null,
    created_at   timestamptz not null default now(),
    unique (supplier_id, currency, month)
);

-- (supplier, currency, month) with earnings or chargebacks not yet on a statement: where the
-- statement closer finds its work. Writers upsert (a row lock); the closer deletes before it reads.
create table invoicing.supplier_pending (
    supplier_id text not null,
    currency    text not null,
    month       text not null check (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    primary key (supplier_id, currency, month)
);

-- (supplier, currency, month) whose statement broke a rule (or hit a bug): set aside with the reason so
-- the month can close for everyone else; their items wait for the next month's close.
create table invoicing.statements_blocked (
    supplier_id text        not null,
    currency    text        not null,
    month       text        not null,
    reason      text        not null,
    blocked_at  timestamptz not null default now(),
    primary key (supplier_id, currency, month)
);

-- The net of each supplier's last statement per currency (a negative net carries forward, R12).
create table invoicing.supplier_balances (
    supplier_id    text   not null,
    currency       text   not null,
    last_month     text   not null,
    last_net_minor bigint not null,
    primary key (supplier_id, currency)
);
create index supplier_balances_negative on invoicing.supplier_balances (last_month) where last_net_minor < 0;

-- The next calendar month to close for statements (null: not started). One row; its lock
-- serializes statement closers of every invoicing worker.
create table invoicing.statement_progress (
    id         boolean primary key default true check (id),
    next_month text check (next_month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$')
);
insert into invoicing.statement_progress (id, next_month) values (true, null);

-- A finalized document never changes (ARCHITECTURE invariant 6): corrections are new documents.
create function invoicing.refuse_document_change() returns trigger language plpgsql as $$
begin
    if tg_op = 'TRUNCATE' then
        raise exception 'finalized documents are immutable: TRUNCATE of invoicing.% refused', tg_table_name
            using errcode = 'SL002';
    end if;
    if old.status = 'finalized' then
        raise exception 'finalized documents are immutable: % on invoicing.% refused (issue a credit note or an adjustment instead)',
            tg_op, tg_table_name using errcode = 'SL002';
    end if;
    if tg_op = 'DELETE' then
        return old;
    end if;
    return new;
end $$;
create trigger invoices_immutable before update or delete on invoicing.invoices
    for each row execute function invoicing.refuse_document_change();
create trigger invoices_no_truncate before truncate on invoicing.invoices
    for each statement execute function invoicing.refuse_document_change();
create trigger credit_notes_immutable before update or delete on invoicing.credit_notes
    for each row execute function invoicing.refuse_document_change();
create trigger credit_notes_no_truncate before truncate on invoicing.credit_notes
    for each statement execute function invoicing.refuse_document_change();
create trigger statements_immutable before update or delete on invoicing.statements
    for each row execute function invoicing.refuse_document_change();
create trigger statements_no_truncate before truncate on invoicing.statements
    for each statement execute function invoicing.refuse_document_change();
