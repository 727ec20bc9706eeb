-- A run's matches keep the keys of the records they join ("source:source id": a bank line's hash, a
-- ledger record's id, a processor line's gateway:txn id), not a JSON copy of each record: the records
-- themselves are in reconcile.bank_lines, ledger.entries and reconcile.processor_lines, and a daily run of
-- a million matches wrote ~400 MB of JSON (measured by `settle bench reconcile --stored`). Rows of earlier
-- runs keep their JSON (`records`); new rows leave it null.
alter table reconcile.matches alter column records drop not null;
alter table reconcile.matches add column record_keys text[];
alter table reconcile.matches add constraint matches_records_kept check (records is not null or record_keys is not null);
