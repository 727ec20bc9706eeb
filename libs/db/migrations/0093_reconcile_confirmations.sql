-- Settlement confirmations a reconciliation run sent to payouts (payout.settlement_confirmed), one row per
-- event id: a later run that matches the same payout with the same bank line sends nothing again (the
-- event carries the first run's id; sent again with another run id it would be a different payload under
-- the same event id, which the payouts worker's inbox refuses).
create table reconcile.confirmations (
    event_id  text        primary key,
    reference text        not null,
    run_id    bigint      not null references reconcile.runs (run_id),
    sent_at   timestamptz not null default now()
);
