-- A clock tick's barrier: the end offsets of the input topics when it was sent. Metering closes the
-- target's hours only once it has read every input partition up to the barrier, and reads no further
-- (nor the next tick) until that close is done: the close is a function of the input log.
alter table metering.clock add column barrier jsonb;
alter table metering.clock add column tick_offset bigint;
