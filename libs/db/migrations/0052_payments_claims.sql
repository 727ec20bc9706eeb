-- Which claim of an attempt a worker holds: every pending → sending move bumps it. A send or an
-- inquiry that was overtaken (its attempt was given back to pending and claimed again) carries an old
-- number, and its answer then decides nothing unless it says the processor charged.
alter table payments.attempts add column claim int not null default 0;

-- Routing's rolling success rate reads each gateway's latest resolved calls.
create index attempts_gateway_resolved on payments.attempts (gateway, resolved_at desc) where resolved_at is not null;
