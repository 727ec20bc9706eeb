-- The postings trigger, leaner: the balance check reads only the statement's own rows, and the
-- row-by-row foreign keys of postings are replaced by set-based existence checks in the same
-- statement trigger (nothing can orphan a posting later: deletes of entries, postings and
-- accounts are refused).
-- Sound because every statement's postings must balance per entry and asset on their own: a
-- later statement (of the same transaction — later transactions are refused) can only add a
-- balanced set, so every entry stays balanced. Account locks and the asset check take one pass.
create or replace function ledger.after_postings() returns trigger language plpgsql as $$
declare
    bad record;
begin
    select n.entry_id, n.asset, sum(n.amount) as total into bad
      from new_postings n
     group by n.entry_id, n.asset
    having sum(n.amount) <> 0
     limit 1;
    if found then
        raise exception 'unbalanced journal entry %: postings in % sum to % (debits must equal credits)',
            bad.entry_id, bad.asset, bad.total using errcode = 'SL001';
    end if;

    select n.entry_id, e.txid into bad
      from (select distinct entry_id from new_postings) n
      left join ledger.entries e on e.id = n.entry_id
     where e.id is null or e.txid <> pg_current_xact_id()
     limit 1;
    if found then
        if bad.txid is null then
            raise exception 'postings of an unknown journal entry %', bad.entry_id using errcode = 'SL001';
        end if;
        raise exception 'postings can only be added to an entry by the transaction that creates it (entry %)',
            bad.entry_id using errcode = 'SL002';
    end if;

    -- Lock the touched accounts in code order (a fixed order: no deadlocks); NO KEY UPDATE is
    -- compatible with the KEY SHARE lock the postings' foreign key takes.
    perform 1 from ledger.accounts
     where code in (select distinct account from new_postings)
     order by code
       for no key update;
    select n.account, n.asset, a.asset as account_asset into bad
      from (select distinct account, asset from new_postings) n
      left join ledger.accounts a on a.code = n.account
     where a.code is null or a.asset <> n.asset
     limit 1;
    if found then
        if bad.account_asset is null then
            raise exception 'posting to unknown account %', bad.account using errcode = 'SL001';
        end if;
        raise exception 'posting in % to account % of another asset', bad.asset, bad.account using errcode = 'SL001';
    end if;

    perform set_config('ledger.posting', 'on', true);
    update ledger.accounts a
       set balance = a.balance + d.delta
      from (select account, sum(amount) as delta from new_postings group by account) d
     where a.code = d.account;
    perform set_config('ledger.posting', 'off', true);
    return null;
end $$;

alter table ledger.postings drop constraint postings_entry_id_fkey;
alter table ledger.postings drop constraint postings_account_fkey;
