-- charge_marks: the latest `charges.watermark` (rating) per partition of charges.rated.v1 that payouts has
-- read. A month's hours are all rated before rating's watermark past its end on each partition, so
-- payouts plans a tick that pays a month only once it has read those watermarks: the pay-when-paid
-- earnings it holds are then every hour of the month, however far its charges partitions lag behind
-- its statements partition (R15).
create table payouts.charge_marks (
    partition int         primary key check (partition >= 0),
    through   timestamptz not null
);
