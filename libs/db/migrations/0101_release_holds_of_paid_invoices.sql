-- A saga's earnings hold was released only by a payment status dated after the hold: money dated before a
-- hold that payouts learnt of after it (a late receipt, a collection answered after the saga's deadline)
-- left the invoice's supplier earnings held for good. Release those now, as payouts does from this
-- version on: when the invoice's latest status has nothing remaining, from that status's as_of or the
-- hold's own time, whichever is later.
update payouts.earnings_holds h
   set released_at = greatest(h.held_at, s.as_of)
  from (select distinct on (invoice_id) invoice_id, remaining_minor, as_of
          from payouts.invoice_status order by invoice_id, revision desc) s
 where s.invoice_id = h.invoice_id and h.released_at is null and s.remaining_minor <= 0;
