-- A refund row waiting to be sent (`pending`) or paid by hand (`manual`) follows the allocation that
-- decides it (R11): when a later recompute gives back another amount, the row's amount changes; when it
-- gives nothing back any more (late money or a late invoice moved what was paid), the row is
-- `cancelled` — never sent, never paid by finance — so what leaves matches refunds_payable.
alter table payments.refunds drop constraint refunds_state_check;
alter table payments.refunds add constraint refunds_state_check
    check (state in ('pending', 'sending', 'succeeded', 'failed', 'manual', 'cancelled'));
