-- R16: NACHA trace numbers continue across an originator's files, so a return (which names only the
-- original trace) finds one entry. next_trace: the trace sequence the rail's next file starts at
-- (null for files built before this migration; rails without trace numbers ignore it).
alter table payouts.payout_files add column next_trace bigint;
