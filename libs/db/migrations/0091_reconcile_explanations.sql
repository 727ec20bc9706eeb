-- Operators' actions on reconciliation breaks (R17): an explanation of the records of a break (it stays
-- a break, never overdue again while every record of it is explained), and bank fees posted from a bank
-- line the ledger did not know. One row per record and action, kept as the audit trail.
create table reconcile.explanations (
    source       text        not null check (source in ('ledger', 'processor', 'bank')),
    source_id    text        not null,
    action       text        not null check (action in ('explained', 'bank_fee_posted')),
    reason       text        not null check (length(reason) between 1 and 2000),
    requested_by text        not null check (length(requested_by) between 1 and 200),
    run_id       bigint      not null references reconcile.runs (run_id),
    break_no     int         not null,
    entry_id     text,
    created_at   timestamptz not null default now(),
    primary key (source, source_id, action)
);

alter table reconcile.breaks add column explanation text not null default '';
