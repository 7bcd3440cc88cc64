-- Cross-node cache invalidation (LISTEN/NOTIFY). Triggers, not the Go
-- code paths, send the notices, so that no writer (a new code path, an
-- operator's SQL) can change a cached row without every node hearing of
-- it. NOTIFY is transactional: a notice is delivered when, and only if,
-- its transaction commits.
--
-- Payloads on channel syncrelay_inval, fields separated by a tab:
--   t <tenant id>          a tenant row changed (record, inbound address)
--   u <tenant id>          a user of the tenant changed
--   m <tenant id> <key>    a Message-ID (msgids) or duplicate key
--                          (thread_copies) became known: nodes add it to
--                          their filter of known keys (see filter.go)
--   r                      a key too long for a payload: rebuild the filter

CREATE FUNCTION syncrelay_notify_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('syncrelay_inval', 't' || chr(9) || OLD.id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('syncrelay_inval', 't' || chr(9) || NEW.id);
    RETURN NEW;
END $$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION syncrelay_notify_tenant();

CREATE FUNCTION syncrelay_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('syncrelay_inval', 'u' || chr(9) || OLD.tenant);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('syncrelay_inval', 'u' || chr(9) || NEW.tenant);
    RETURN NEW;
END $$;

CREATE TRIGGER users_notify AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION syncrelay_notify_user();

-- A payload is limited to 8000 bytes; keys are at most 998 characters
-- (SPEC §3), but a longer one must not fail the commit: it asks the nodes
-- to rebuild their filter instead.
CREATE FUNCTION syncrelay_notify_key(tenant text, k text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF octet_length(tenant) + octet_length(k) > 7900 THEN
        PERFORM pg_notify('syncrelay_inval', 'r');
    ELSE
        PERFORM pg_notify('syncrelay_inval', 'm' || chr(9) || tenant || chr(9) || k);
    END IF;
END $$;

CREATE FUNCTION syncrelay_notify_msgid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM syncrelay_notify_key(NEW.tenant, NEW.msgid);
    RETURN NEW;
END $$;

CREATE FUNCTION syncrelay_notify_dk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM syncrelay_notify_key(NEW.tenant, NEW.dk);
    RETURN NEW;
END $$;

CREATE TRIGGER msgids_notify AFTER INSERT ON msgids
    FOR EACH ROW EXECUTE FUNCTION syncrelay_notify_msgid();
CREATE TRIGGER thread_copies_notify AFTER INSERT ON thread_copies
    FOR EACH ROW EXECUTE FUNCTION syncrelay_notify_dk();
