package main

import (
	"context"
	"fmt"
	"time"

	"syncrelay/config"
	"syncrelay/store"
	"syncrelay/store/postgres"
)

// checkPostgresStore is checkStore for the postgres backend: the DSN
// connects, the schema is one this binary can run on, and commits are
// durable enough for "nothing acknowledged is lost" (SPEC §11).
func checkPostgresStore(ctx context.Context, rep *checkReport, c *config.Config, tenantID string) *storeView {
	sv := &storeView{}
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	in, err := postgres.Inspect(ictx, c.Store.DSN)
	if err != nil {
		rep.add("store", checkFail, fmt.Sprintf("cannot reach the PostgreSQL database of store.dsn: %v", err),
			"check the DSN (store.dsn, store.dsn_file or "+config.EnvStoreDSN+"), that the server runs and accepts this host, and the password")
		return sv
	}
	switch {
	case in.SchemaVersion > in.Binary:
		rep.add("store", checkFail, fmt.Sprintf("the database's schema version %d is newer than this binary's %d", in.SchemaVersion, in.Binary),
			"upgrade syncrelay on this node to the version the other nodes run")
		return sv
	case in.SchemaVersion == 0:
		rep.add("store", checkOK, fmt.Sprintf("PostgreSQL %s answers; no syncrelay schema yet (created at first start)", in.ServerVersion), "")
		sv.known = true
	case in.SchemaVersion < in.Binary:
		rep.add("store", checkOK, fmt.Sprintf("PostgreSQL %s answers; schema version %d, migrated to %d at the next start", in.ServerVersion, in.SchemaVersion, in.Binary), "")
	default:
		if err := readPostgresView(ctx, c, tenantID, sv); err != nil {
			rep.add("store", checkFail, fmt.Sprintf("cannot read the syncrelay schema: %v", err), "check the database user's privileges on the schema")
			return sv
		}
		rep.add("store", checkOK, fmt.Sprintf("PostgreSQL %s answers; schema version %d (%s)", in.ServerVersion, in.SchemaVersion, plural(len(sv.tenants), "tenant", "tenants")), "")
	}
	checkSyncCommit(rep, in)
	return sv
}

// checkSyncCommit: an acknowledged message must survive the loss of the
// database server, which needs synchronous_commit on (or remote_*) and a
// synchronous standby.
func checkSyncCommit(rep *checkReport, in *postgres.Info) {
	switch in.SynchronousCommit {
	case "off", "local":
		rep.add("store-durability", checkFail, fmt.Sprintf("synchronous_commit is %q: a message answered 250 can be lost in a crash or failover", in.SynchronousCommit),
			"set synchronous_commit = on (or remote_apply) for syncrelay's database user: ALTER ROLE ... SET synchronous_commit = on")
	case "remote_write":
		rep.add("store-durability", checkWarn, "synchronous_commit is \"remote_write\": the standby has the commit in memory, not on disk",
			"prefer synchronous_commit = on or remote_apply")
	default:
		if in.Standbys == "" {
			rep.add("store-durability", checkWarn, fmt.Sprintf("synchronous_commit is %q but synchronous_standby_names is empty: commits are durable on this server only; a failover to an asynchronous standby can lose acknowledged mail", in.SynchronousCommit),
				"for high availability run a synchronous standby (synchronous_standby_names) or a managed service with synchronous replication")
			return
		}
		rep.add("store-durability", checkOK, fmt.Sprintf("synchronous_commit is %q with synchronous standbys %q", in.SynchronousCommit, in.Standbys), "")
	}
}

// readPostgresView reads what the other checks need (the tenants, the key
// fingerprint ...) from a database already at this binary's schema.
func readPostgresView(ctx context.Context, c *config.Config, tenantID string, sv *storeView) error {
	st, err := postgres.Open(ctx, c.Store.DSN, postgres.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	ts, err := st.Tenants(ctx)
	if err != nil {
		return err
	}
	if sv.issued, _, err = st.LatestIssuedMessageID(ctx); err != nil {
		return err
	}
	if tenantID != "" {
		now := time.Now()
		var a *store.TenantActivity
		if a, err = st.TenantActivity(ctx, tenantID, now, now.Add(-24*time.Hour)); err != nil {
			return err
		}
		sv.activity = a
	}
	if sv.keyFP, _, err = st.KeyFingerprint(ctx); err != nil {
		return err
	}
	if sv.hasData, err = st.HasData(ctx); err != nil {
		return err
	}
	sv.tenants, sv.known = ts, true
	return nil
}
