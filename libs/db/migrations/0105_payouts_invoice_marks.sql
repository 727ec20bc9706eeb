-- invoice_marks: the latest `invoices.watermark` (invoicing) per partition of invoices.finalized.v1 that payouts
-- has read. A tick's invoices are all finalized before invoicing's watermark past it on each partition, so
-- payouts plans a tick only once it has read them: an invoice it has not read counts as not issued and would
-- hold all of a pay-when-paid supplier's earnings tied to it, even money the invoice already had (R15).
-- No mark at all (payouts without invoicing upstream): nothing to wait for.
create table payouts.invoice_marks (
    partition int         primary key check (partition >= 0),
    through   timestamptz not null
);
