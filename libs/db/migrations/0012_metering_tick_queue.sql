-- Ticks that arrive while a close is still running wait here, in log order, and are applied one at a
-- time when the close before them sent its watermark: two ticks read in one batch (a lagging or
-- restarted worker) no longer merge into one close, so what a tick closes does not depend on lag.
create table metering.queued_ticks (
    tick_offset bigint      primary key,  -- the tick's offset on clock.ticks.v1 (log order)
    at          timestamptz not null,
    barrier     jsonb,
    queued_at   timestamptz not null default now()
);
