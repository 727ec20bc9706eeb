-- A dead-lettered message of a money-moving consumer holds the later messages of its key (per topic):
-- they are parked as dead letters behind it ("followers") instead of being applied out of order, until
-- an operator redrives the first one (settle dlq redrive) or drops it (settle dlq drop); then the
-- followers are redriven after it, in their original order.
create table settle.key_holds (
    consumer   text        not null,
    topic      text        not null,
    key        bytea       not null,
    root_id    bigint      not null references settle.dead_letters (id),
    created_at timestamptz not null default now(),
    primary key (consumer, topic, key)
);
alter table settle.dead_letters add column held_by bigint references settle.dead_letters (id);
alter table settle.dead_letters add column dropped_at timestamptz;
alter table settle.dead_letters add column drop_reason text;
create index dead_letters_held_by on settle.dead_letters (held_by) where held_by is not null;
