-- Operations: what an operator did to held or quarantined data, and what makes held data visible.

-- Every operator action (drop or release of held data, retry of a quarantined close), with who and why.
-- Append-only by convention: rows are never updated or deleted by Settle.
create table settle.operator_actions (
    id        bigint generated always as identity primary key,
    at        timestamptz not null default now(),
    actor     text        not null,
    action    text        not null check (action in ('drop', 'release', 'retry')),
    service   text        not null,
    kind      text        not null,
    item_id   text        not null,
    reason    text        not null check (reason <> ''),
    -- What the item was when the operator acted (its stored row), and what was done (dead letter id ...).
    detail    jsonb       not null default '{}'::jsonb
);
create index operator_actions_item on settle.operator_actions (item_id, at);

-- Lifecycle events metering holds (services.metering.domain, E3): a window end whose start has not
-- arrived, a decommission before any provisioning. The fold decides what is held; the lifecycle
-- consumer keeps this table in step with it, so listing and counting held events is a plain query.
create table metering.held_events (
    event_id      text        primary key,
    allocation_id text        not null,
    kind          text        not null,
    at            timestamptz not null,
    received_at   timestamptz not null default now(),
    reason        text        not null
);
create index held_events_allocation on metering.held_events (allocation_id);

-- Backfill from the facts already stored (the same rules in SQL: a decommission of an allocation with
-- no provisioning; a window end with no start of the same window). received_at is unknown for these:
-- the allocation's last update stands for it.
insert into metering.held_events (event_id, allocation_id, kind, at, received_at, reason)
select f->>'event_id', a.allocation_id, f->>'kind', (f->>'at')::timestamptz, a.updated_at,
       case when f->>'kind' = 'decommissioned'
            then 'decommission before any provisioning: nothing to end until the allocation is provisioned'
            else 'window end whose start has not arrived: no effect until its start arrives' end
  from metering.allocations a, jsonb_array_elements(a.facts) f
 where (f->>'kind' = 'decommissioned'
        and not exists (select 1 from jsonb_array_elements(a.facts) p where p->>'kind' = 'provisioned'))
    or (f->>'kind' like '%\_ended'
        and not exists (select 1 from jsonb_array_elements(a.facts) s
                         where s->>'kind' = replace(f->>'kind', '_ended', '_started')
                           and s->>'window_id' = f->>'window_id'))
on conflict (event_id) do nothing;

-- When metering first saw an allocation (an allocation provisioned for a contract metering does not
-- know waits for it; this is "since when"). Rows that exist already get the migration's time.
alter table metering.allocations add column first_seen_at timestamptz not null default now();

-- Usage held by rating for an unknown contract gates its partition's watermark until an operator
-- releases it: released usage stays held (rated when its contract arrives) but no longer gates.
alter table rating.usage_held add column released_at timestamptz;

-- When rating received a top-up it holds (its contract unknown). Rows that exist already get the
-- migration's time.
alter table rating.wallet_topups add column received_at timestamptz not null default now();

-- Inbox retention (libs.messaging.inbox.prune_inbox) keeps the claims of events that have an open
-- dead letter, so that their redrive is still deduplicated by the groups that handled them.
create index dead_letters_open_event on settle.dead_letters (event_id) where redriven_at is null;
