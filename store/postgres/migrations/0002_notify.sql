-- Cross-node cache invalidation (LISTEN/NOTIFY). For tenants and users,
-- triggers send the notices, so that no writer (a new code path, an
-- operator's SQL) can change a cached row without every node hearing of
-- it. New Message-IDs and duplicate keys are announced by the store's own
-- commits instead, one notice per transaction for all its keys (a
-- trigger's notice per row cost about 100 us of server CPU per stored
-- message). NOTIFY is transactional: a notice is delivered when, and only
-- if, its transaction commits.
--
-- Payloads on channel syncrelay_inval, fields separated by a tab:
--   t <tenant id>          a tenant row changed (record, inbound address)
--   u <tenant id>          a user of the tenant changed
--   k <keys>               Message-IDs (msgids) or duplicate keys
--                          (thread_copies) became known: nodes add them to
--                          their filter of known keys (filter.go, keys.go)

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
