-- invoices.watermark: invoicing tells every partition of invoices.finalized.v1 that every invoice of a
-- period ending at or before `through` is out (a quarantined contract's excepted: it waits for an
-- operator). Payments answers a clock tick (payments.watermark, which payouts plans on) only once it has
-- that mark at or past the tick from every partition, so the statuses of the invoices a month-closing
-- tick issues — paid at issue from the renter's credit balance, R11 — count at that tick's planning
-- (R15: money applied at or before planning releases), instead of a month later.
create table invoicing.invoices_announced (
    id       boolean     primary key default true check (id),
    through  timestamptz
);
insert into invoicing.invoices_announced (id, through) values (true, null);

create table payments.invoice_marks (
    partition  int         primary key check (partition >= 0),
    through    timestamptz not null
);

-- Ticks payments handled (collections started, event time moved) whose watermark waits for invoicing.
create table payments.ticks_unanswered (
    at  timestamptz primary key
);
