-- Quarantine actions (release / delete) of the email admin page and API,
-- written in the commit that removes the quarantined message; a tenant
-- keeps its newest store.QuarantineActionsKept.
CREATE SEQUENCE quarantine_action_seq;
CREATE TABLE quarantine_actions (
    tenant text NOT NULL,
    seq    bigint NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (tenant, seq)
);

-- Send For approval emails waiting to be sent: when the next attempt is
-- due (NULL: nothing to send), so the sender's claim is an index scan.
ALTER TABLE delegations ADD COLUMN email_due timestamptz;
CREATE INDEX delegations_email_due ON delegations (email_due) WHERE email_due IS NOT NULL;
