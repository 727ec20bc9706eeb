-- Payouts plans a tick only once payments has answered it (R15: only money applied at or before
-- planning releases anything — decided by the order of records, never by arrival time).
--
-- payment_marks: the latest `payments.watermark` per partition of invoices.payments.v1.
create table payouts.payment_marks (
    partition  int primary key,
    through    timestamptz not null
);

-- The payments watermark of the revision's partition when it arrived (null: none yet). A revision
-- after watermark T was published after payments answered tick T: it counts from the next planning.
alter table payouts.invoice_status add column after_mark timestamptz;
