-- The double-entry ledger. Amounts are exact integers at the asset's scale ("USD/8": 10^-8 USD),
-- debit positive, credit negative. The database itself refuses an unbalanced entry, any UPDATE,
-- DELETE or TRUNCATE of journal rows, and any posting that takes an account below its floor.
create schema if not exists ledger;

create table ledger.accounts (
    code           text        primary key,
    currency       text        not null check (currency ~ '^[A-Z]{3}$'),
    asset          text        not null check (asset ~ '^[A-Z]{3}/[0-9]+$'),
    type           text        not null check (type in ('asset', 'liability', 'equity', 'revenue', 'expense')),
    owner          text        not null,
    normal_balance text        not null check (normal_balance in ('debit', 'credit')),
    -- Lowest balance allowed on the normal side (a wallet: 0). Null: no floor.
    floor          numeric(38, 0),
    -- Debit-positive balance, kept by the postings trigger under row locks.
    balance        numeric(38, 0) not null default 0,
    description    text        not null default '',
    created_at     timestamptz not null default now(),
    constraint account_floor check (
        floor is null
        or (case when normal_balance = 'debit' then balance else -balance end) >= floor
    )
);
create index accounts_owner on ledger.accounts (owner);

create table ledger.entries (
    id             text        primary key,
    cause_id       text        not null,
    kind           text        not null,
    occurred_at    timestamptz not null,
    recorded_at    timestamptz not null default now(),
    correlation_id text,
    description    text        not null default '',
    reverses       text        unique references ledger.entries (id),
    txid           xid8        not null default pg_current_xact_id(),
    unique (cause_id, kind)
);
create index entries_occurred_at on ledger.entries (occurred_at);

create table ledger.postings (
    entry_id text           not null references ledger.entries (id),
    seq      int            not null,
    account  text           not null references ledger.accounts (code),
    asset    text           not null,
    amount   numeric(38, 0) not null check (amount <> 0),
    primary key (entry_id, seq)
);
create index postings_account on ledger.postings (account);

-- Append-only: corrections are reversal entries.
create function ledger.refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'ledger is append-only: % on ledger.% refused (post a reversal entry instead)',
        tg_op, tg_table_name using errcode = 'SL002';
end $$;
create trigger entries_immutable before update or delete on ledger.entries
    for each row execute function ledger.refuse_change();
create trigger postings_immutable before update or delete on ledger.postings
    for each row execute function ledger.refuse_change();
create trigger entries_no_truncate before truncate on ledger.entries
    for each statement execute function ledger.refuse_change();
create trigger postings_no_truncate before truncate on ledger.postings
    for each statement execute function ledger.refuse_change();

-- After each INSERT statement on postings: every touched entry was created by this transaction,
-- balances per asset, uses accounts of the same asset; then balances move under row locks taken in
-- account-code order (a fixed order: no deadlocks), and the account_floor check guards floors.
-- Rule for writers: all postings of one entry are inserted by one statement.
create function ledger.after_postings() returns trigger language plpgsql as $$
declare
    bad record;
begin
    select n.entry_id into bad
      from (select distinct entry_id from new_postings) n
      join ledger.entries e on e.id = n.entry_id
     where e.txid <> pg_current_xact_id()
     limit 1;
    if found then
        raise exception 'postings can only be added to an entry by the transaction that creates it (entry %)',
            bad.entry_id using errcode = 'SL002';
    end if;

    select n.entry_id, n.asset, n.account into bad
      from new_postings n join ledger.accounts a on a.code = n.account
     where a.asset <> n.asset
     limit 1;
    if found then
        raise exception 'posting of entry % in % to account % of another asset', bad.entry_id, bad.asset, bad.account
            using errcode = 'SL001';
    end if;

    select p.entry_id, p.asset, sum(p.amount) as total into bad
      from ledger.postings p
     where p.entry_id in (select distinct entry_id from new_postings)
     group by p.entry_id, p.asset
    having sum(p.amount) <> 0
     limit 1;
    if found then
        raise exception 'unbalanced journal entry %: postings in % sum to % (debits must equal credits)',
            bad.entry_id, bad.asset, bad.total using errcode = 'SL001';
    end if;

    perform 1 from ledger.accounts
     where code in (select distinct account from new_postings)
     order by code
       for no key update;  -- compatible with the FOR KEY SHARE the postings' foreign key takes
    perform set_config('ledger.posting', 'on', true);
    update ledger.accounts a
       set balance = a.balance + d.delta
      from (select account, sum(amount) as delta from new_postings group by account) d
     where a.code = d.account;
    perform set_config('ledger.posting', 'off', true);
    return null;
end $$;
create trigger postings_after_insert after insert on ledger.postings
    referencing new table as new_postings
    for each statement execute function ledger.after_postings();

-- Balances move only through postings: a direct UPDATE of balance (or of an account's identity) is refused.
create function ledger.guard_account() returns trigger language plpgsql as $$
begin
    if new.balance is distinct from old.balance
       and coalesce(current_setting('ledger.posting', true), 'off') <> 'on' then
        raise exception 'account balances change only through postings (account %)', old.code
            using errcode = 'SL002';
    end if;
    if new.code <> old.code or new.currency <> old.currency or new.asset <> old.asset
       or new.normal_balance <> old.normal_balance then
        raise exception 'account % cannot change its code, currency or normal balance', old.code
            using errcode = 'SL002';
    end if;
    return new;
end $$;
create trigger accounts_guard before update on ledger.accounts
    for each row execute function ledger.guard_account();
create trigger accounts_no_delete before delete or truncate on ledger.accounts
    for each statement execute function ledger.refuse_change();
