package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"syncrelay/config"
	"syncrelay/outbound"
	"syncrelay/pages"
	"syncrelay/router"
	"syncrelay/signedlink"
	"syncrelay/store"
)

// newPages builds the hosted pages (/p/...): links signed with the links
// key, probes sent through the outbound service (nil: not configured).
func newPages(c *config.Config, st Store, keys *Keys, sender *outbound.Service, r *router.Router, log *slog.Logger) (*pages.Server, error) {
	o := pages.Options{
		Store: st, Links: signedlink.New(keys.Links, nil), CSRFKey: keys.Links,
		PublicURL: c.PublicBaseURL(), Hostname: c.SMTP.Hostname, Log: log, ProbeRefresh: c.HTTP.PageRefresh,
		Quarantine: &quarantineActions{st: st, router: r, log: log},
	}
	if sender != nil {
		o.Probes = sender
	}
	return pages.New(o)
}

// withPages serves /p/ from the pages (no bearer token: the signed link
// is the authentication) and everything else from the API.
func withPages(apiSrv http.Handler, pg http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/p/", pg)
	mux.Handle("/", apiSrv)
	return mux
}

// quarantineActions release a quarantined message to the profile (its
// bytes go through the router again, marked released, and are committed
// to the thread) or delete it; both are recorded (store.QuarantineAction,
// in the commit that takes the message out of the quarantine) and logged
// with the tenant and ids.
type quarantineActions struct {
	st     Store
	router *router.Router
	log    *slog.Logger
}

func (q *quarantineActions) find(ctx context.Context, tenant string, id uint64) (*store.Quarantined, error) {
	qs, err := q.st.QuarantinedMessages(ctx, tenant)
	if err != nil {
		return nil, err
	}
	for _, m := range qs {
		if m.ID == id {
			return m, nil
		}
	}
	return nil, fmt.Errorf("quarantined message %d of %s: %w", id, tenant, store.ErrNotFound)
}

// rawBody is a stored raw file as the router's Body.
type rawBody struct{ f store.RawFile }

func (b rawBody) Open() io.Reader { return io.NewSectionReader(b.f, 0, b.f.Size()) }
func (b rawBody) Size() int64     { return b.f.Size() }

func (q *quarantineActions) ReleaseQuarantined(ctx context.Context, tenant string, id uint64, by string) error {
	m, err := q.find(ctx, tenant, id)
	if err != nil {
		return err
	}
	f, err := q.st.OpenRaw(ctx, m.Raw)
	if err != nil {
		return fmt.Errorf("release quarantined %d: %w", id, err)
	}
	defer f.Close()
	out, err := q.router.Route(ctx, router.Input{Tenant: tenant, Body: rawBody{f}, Released: true})
	if err != nil {
		return fmt.Errorf("release quarantined %d: %w", id, err)
	}
	if out.Decision != router.Stored && out.Decision != router.Duplicate {
		return fmt.Errorf("release quarantined %d: decided %s/%s", id, out.Decision, out.Reason)
	}
	// A crash after the copy's commit and before this one leaves the
	// message in the quarantine: releasing it again finds the copy a
	// duplicate, and the action is recorded then.
	act := &store.QuarantineAction{Action: store.QuarantineReleased, Message: out.Message, Thread: out.Thread, By: by}
	if err := q.st.DeleteQuarantined(ctx, tenant, id, act); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	q.log.InfoContext(ctx, "quarantined message released to the profile", "tenant", tenant, "quarantine_id", id,
		"decision", out.Decision, "thread", out.Thread, "message", out.Message, "by", by)
	return nil
}

func (q *quarantineActions) DeleteQuarantined(ctx context.Context, tenant string, id uint64, by string) error {
	act := &store.QuarantineAction{Action: store.QuarantineDeleted, By: by}
	if err := q.st.DeleteQuarantined(ctx, tenant, id, act); err != nil {
		return err
	}
	q.log.InfoContext(ctx, "quarantined message deleted", "tenant", tenant, "quarantine_id", id, "by", by)
	return nil
}
