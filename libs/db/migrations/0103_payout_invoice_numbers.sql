-- The invoices a plan named when payouts announced it (`payout.planned|held|waiting`, `invoice_numbers`),
-- kept with the payout: `settle sagas verify` checks that no saga completed while payouts still owes a
-- payout naming its invoice. Null for plans announced before this migration (not checked).
alter table payouts.payouts add column if not exists invoice_numbers text[];
