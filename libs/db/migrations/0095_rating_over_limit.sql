-- over_limit: whether the contract's exposure was above its credit limit (in force then) at its last
-- movement. R9 fires when a movement finds the exposure above the limit and the previous one did not —
-- the same as "before <= limit < after" while the limit stays put, and it also fires after a limit is
-- lowered below the exposure (at the first movement once the lower limit is in force), which the
-- comparison of two exposures against one limit missed. Rows from before this migration start false:
-- a contract already over its limit is alerted once more at its next movement.
alter table rating.credit_exposure add column over_limit boolean not null default false;
