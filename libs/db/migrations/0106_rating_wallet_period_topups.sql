-- R8 (2026-12-08): a late usage correction (a charge delta of a period older than others the wallet already ran)
-- is settled by R8's closed form from its period on — each period draws min(usage, balance at its start + its
-- top-ups) — so the wallet keeps its top-ups per period: topups_x3600 = Σ amount × 3600 of the top-ups the wallet
-- ran in the period (services.rating.domain.WalletState.topups_by_period). A period with top-ups and no usage
-- has a row too (usage, drawn and overage 0).
--
-- Backfill: the top-ups of rating.wallet_topups with status 'applied' — exactly those the saved state has seen (a
-- wallet run marks them applied in the transaction that saves the state) — each in the billing period containing
-- its `at` (R1: from the day `billing_anchor_day` of the contract's terms, 00:00 UTC, as
-- domain.contracts.periods.period_containing). Held, received (not yet run) and quarantined top-ups are not in
-- the state. Check: every wallet's balance is then Σ top-ups − Σ drawn over its periods (what WalletState
-- asserts on load, every top-up and draw having moved both sides); otherwise the migration fails and names the
-- wallets, rather than leave a wallet that can no longer be loaded.
alter table rating.wallet_periods add column topups_x3600 numeric not null default 0 check (topups_x3600 >= 0);

insert into rating.wallet_periods (contract_id, period_start, usage_x3600, drawn_x3600, overage_x3600, topups_x3600)
select t.contract_id, p.period_start, 0, 0, 0, sum(t.amount * 3600)
  from rating.wallet_topups t
  join rating.contracts c on c.contract_id = t.contract_id
 cross join lateral (
        select date_trunc('month', t.at at time zone 'UTC')
               + ((c.terms ->> 'billing_anchor_day')::int - 1) * interval '1 day' as anchor
       ) a
 cross join lateral (
        select (case when a.anchor > t.at at time zone 'UTC' then a.anchor - interval '1 month' else a.anchor end)
               at time zone 'UTC' as period_start
       ) p
 where t.status = 'applied'
 group by t.contract_id, p.period_start
    on conflict (contract_id, period_start) do update set topups_x3600 = excluded.topups_x3600;

do $$
declare
    off_balance text;
begin
    select string_agg(w.contract_id, ', ' order by w.contract_id) into off_balance
      from rating.wallets w
      left join (select contract_id, sum(topups_x3600) as topups_x3600, sum(drawn_x3600) as drawn_x3600
                   from rating.wallet_periods group by contract_id) p on p.contract_id = w.contract_id
     where w.balance_x3600 <> coalesce(p.topups_x3600, 0) - coalesce(p.drawn_x3600, 0);
    if off_balance is not null then
        raise exception 'rating.wallets whose balance is not their top-ups minus their draws: %', left(off_balance, 2000);
    end if;
end $$;
