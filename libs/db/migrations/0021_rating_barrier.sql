-- The barrier of the latest received usage watermark (from its clock tick), passed on with the
-- forwarded charges watermark so invoicing reads contracts up to it before it closes periods.
alter table rating.watermarks add column received_barrier jsonb;
