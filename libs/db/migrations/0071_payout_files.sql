-- payouts: R16 files. Every planned payout goes out in exactly one file of its rail (per attempt); a file is
-- committed (bytes, sha256, totals) before anything leaves, then handed to a transport. Bank results
-- (acknowledgements, returns/rejects, settlement confirmations from reconciliation) move files and payouts on.

-- The rails' states of a payout (planned → sent → completed | returned | rejected; waiting_operator when no
-- rail can carry it), the attempt in flight and why it waits for an operator.
alter table payouts.payouts add column attempt integer not null default 0 check (attempt >= 0);
alter table payouts.payouts add column file_id text;
alter table payouts.payouts add column sent_rail text;
alter table payouts.payouts add column rail_reason text;

-- supplier.payee_updated may name a fallback rail (R16: an amount over the rail's limit goes by it).
alter table payouts.payees add column fallback_rail text;

-- One artefact of one rail, cut at a tick: id, batch id and sequence derive from (rail, tick, sequence).
create table payouts.payout_files (
    file_id        text primary key,
    rail           text        not null,
    tick           timestamptz not null,
    sequence       integer     not null check (sequence >= 0),
    batch_id       text        not null,
    name           text        not null unique,
    effective_date date        not null,
    state          text        not null check (state in ('built', 'submitted', 'acknowledged', 'settled', 'rejected')),
    content        bytea       not null,
    sha256         text        not null,
    media_type     text        not null,
    entry_count    integer     not null check (entry_count > 0),
    total_minor    bigint      not null,
    currency       text        not null,
    path           text,
    built_at       timestamptz not null default now(),
    submitted_at   timestamptz,
    acknowledged_at timestamptz,
    unique (rail, tick, sequence)
);
create index on payouts.payout_files (state);

-- Every state a file went through (the operator's `settle payouts files show`).
create table payouts.payout_file_states (
    id       bigint generated always as identity primary key,
    file_id  text        not null references payouts.payout_files (file_id),
    state    text        not null,
    at       timestamptz not null default now(),
    detail   text
);
create index on payouts.payout_file_states (file_id, id);

-- A payout attempt in a file. `ref` is what the rail carries for it (ISO end-to-end id, NACHA addenda
-- reference); `rail_reference` the rail's own id for it (ACH trace number). A payout is in at most one
-- file that has not failed it (returned / rejected): a retry is a new attempt in a later file.
create table payouts.payout_file_items (
    file_id         text        not null references payouts.payout_files (file_id),
    payout_id       text        not null references payouts.payouts (payout_id),
    attempt         integer     not null check (attempt >= 1),
    ref             text        not null unique,
    rail_reference  text        not null,
    payee_event_id  text        not null,
    amount_minor    bigint      not null check (amount_minor > 0),
    currency        text        not null,
    outcome         text check (outcome in ('completed', 'returned', 'rejected')),
    code            text,
    outcome_at      timestamptz,
    primary key (file_id, payout_id),
    unique (payout_id, attempt)
);
create unique index payout_file_items_one_live on payouts.payout_file_items (payout_id)
    where outcome is null or outcome = 'completed';

-- A payee whose payout came back (return / reject): retried only after its details change (R16).
create table payouts.payee_flags (
    supplier_id    text        not null,
    payee_event_id text        not null,
    payout_id      text        not null,
    attempt        integer     not null,
    kind           text        not null,
    code           text        not null,
    reason         text        not null,
    at             timestamptz not null,
    primary key (payout_id, attempt)
);

-- Notifications of change (ACH NOC): recorded for the operator, not applied to the payee.
create table payouts.payee_notices (
    payout_id      text        not null,
    attempt        integer     not null,
    code           text        not null,
    corrected_data text,
    at             timestamptz not null,
    primary key (payout_id, attempt, code)
);
