-- The instant the latest payment status of an invoice is "as of" (the last fact that changed it, R11's walk).
-- Payments publishes a status per instant that changed the invoice; on a recomputation it publishes only the
-- instants after this one when the history up to it is unchanged (else the whole history again). Null for
-- rows written before this migration: their next change publishes the whole history.
alter table payments.invoice_status add column if not exists as_of timestamptz;
