-- The steps of a saga as its worker evaluated them (under the worker's policy), so `settle sagas show`
-- shows what the worker saw rather than re-evaluating the facts under the CLI's own settings (which may
-- not follow payouts). Null for a saga not updated since this migration: shown from its facts, as before.
alter table saga.sagas add column if not exists steps text[];
