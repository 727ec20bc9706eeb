-- Payouts plans a tick only once every statement final by it has arrived (R15: planning at the tick
-- covers every month final by then, whatever reached payouts first).
--
-- statement_marks: the latest `statements.closed` per partition of statements.finalized.v1 (forward
-- moves only); the month closed on every partition is the least of them.
create table payouts.statement_marks (
    partition  int primary key,
    month      text        not null,
    issued_at  timestamptz not null
);

-- Every tick received, planned in order once it may be (a backlog of ticks is planned one by one, as
-- a calm run would, never only at the latest).
create table payouts.ticks (
    at         timestamptz primary key,
    planned    boolean     not null default false
);
create index on payouts.ticks (at) where not planned;
