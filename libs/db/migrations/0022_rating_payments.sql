-- rating: what payments says is still owed on each invoice (invoices.payments.v1), so that R9's
-- exposure counts unpaid invoiced amounts: an invoice contributes its remaining amount once payments
-- has reported on it, its amount due until then.
create table rating.invoice_payments (
    invoice_id  text primary key,
    contract_id text    not null,
    revision    int     not null,
    remaining   numeric not null
);
