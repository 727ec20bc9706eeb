-- R14 + R15: a tick's collections happen at their due dates, in event time before (or at) the tick, so the
-- money they collect counts at that tick's payout planning ("money applied at or before planning"). Payments
-- therefore sends a tick's payments.watermark (which payouts plans on) only once no collection attempt dated
-- at or before the tick is still being sent: the tick waits here meanwhile. An outcome left unknown does not
-- hold it (it is resolved by inquiry on the processor's clock; its money, if any, counts at the next planning).
create table payments.ticks_collecting (
    at  timestamptz primary key
);
