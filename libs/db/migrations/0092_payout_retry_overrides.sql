-- An operator's retry of a returned or rejected payout that R16 would not send again (settle payouts
-- retry): one more attempt with the supplier's latest payee details, once per failed attempt.
alter table payouts.operator_actions drop constraint operator_actions_action_check;
alter table payouts.operator_actions add constraint operator_actions_action_check
    check (action in ('hold', 'release', 'retry'));

create table payouts.retry_overrides (
    payout_id     text   not null references payouts.payouts (payout_id),
    after_attempt int    not null check (after_attempt >= 1),
    action_id     bigint not null references payouts.operator_actions (id),
    primary key (payout_id, after_attempt)
);
