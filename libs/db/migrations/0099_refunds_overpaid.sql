-- A refund already sent (or paid by hand) keeps its amount. When a later recompute of the allocation (R11:
-- late money, a late older invoice) gives back less than was sent, the renter was paid back too much: the
-- difference stays on refunds_payable as a debit and is kept here, on the refund that carried it, so that
-- finance sees it (`settle payments list --refunds`, gauge settle_payment_refunds_overpaid, alert
-- SettleRefundOverpaid) instead of a line in a log. Zero again once the allocation gives it all back.
alter table payments.refunds add column overpaid_minor bigint not null default 0 check (overpaid_minor >= 0);
create index refunds_overpaid on payments.refunds (renter_id) where overpaid_minor > 0;
