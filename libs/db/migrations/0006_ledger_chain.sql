-- A tamper-evident journal: every entry is a link of a hash chain, one chain per ledger (the entry's
-- assets sorted and joined by '+': 'USD/8'). The n-th entry of a chain stores the hash of the
-- (n-1)-th and its own hash = SHA-256(prev_hash || the entry's canonical chain line), computed by the
-- writer (libs/ledger/proof.py, libs/ledger/store.py post()). A chain's head row is the serialization
-- point: post() locks the heads of the chains it extends (in chain order) for the rest of its
-- transaction. `settle ledger verify` recomputes every chain from the rows.
alter table ledger.entries
    add column chain     text,
    add column chain_seq bigint,
    add column prev_hash bytea,
    add column hash      bytea;
-- Entries written from now on must be chained; entries written before this migration stay unchained
-- (NOT VALID: existing rows are not checked, every new or changed row is).
alter table ledger.entries add constraint entries_chained check (
    chain is not null and chain_seq >= 1 and octet_length(prev_hash) = 32 and octet_length(hash) = 32
) not valid;
alter table ledger.entries add constraint entries_chain_position unique (chain, chain_seq);

create table ledger.chain_heads (
    chain text   primary key,
    seq   bigint not null default 0 check (seq >= 0),
    hash  bytea  not null default decode(repeat('00', 32), 'hex') check (octet_length(hash) = 32)
);

-- A head only moves forward and is never deleted.
create function ledger.guard_chain_head() returns trigger language plpgsql as $$
begin
    if new.chain <> old.chain or new.seq < old.seq then
        raise exception 'chain head % can only move forward (% -> %)', old.chain, old.seq, new.seq
            using errcode = 'SL002';
    end if;
    return new;
end $$;
create trigger chain_heads_guard before update on ledger.chain_heads
    for each row execute function ledger.guard_chain_head();
create trigger chain_heads_no_delete before delete or truncate on ledger.chain_heads
    for each statement execute function ledger.refuse_change();

-- When chaining started: an unchained entry written by a later transaction is a break.
create table ledger.chain_origin (
    one        boolean     primary key default true check (one),
    txid       xid8        not null default pg_current_xact_id(),
    started_at timestamptz not null default now()
);
insert into ledger.chain_origin default values;
create trigger chain_origin_immutable before update or delete on ledger.chain_origin
    for each row execute function ledger.refuse_change();
