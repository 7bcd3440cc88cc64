package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"syncrelay/config"
	"syncrelay/delegation"
	"syncrelay/outbound"
	"syncrelay/signedlink"
)

// newApprovals builds Send For approval by email (SPEC §7a): links signed
// with the links key, pointing at http.public_url, emailed through the
// requester's grant by the outbound service (nil: tenants asking for email
// get approval_email "not_sent").
func newApprovals(c *config.Config, st Store, keys *Keys, sender *outbound.Service, log *slog.Logger) (*delegation.Approvals, error) {
	o := delegation.Options{Store: st, Signer: signedlink.New(keys.Links, nil), BaseURL: c.PublicBaseURL(), Log: log,
		Lease: approvalLease(c.Outbound)}
	if sender != nil {
		o.Sender = sender
	}
	return delegation.New(o)
}

// startApprovals runs the queue of approval emails (emails left by a
// request whose send failed temporarily, or by a process that stopped
// before sending). stop waits for an attempt in flight to be recorded.
func startApprovals(ap *delegation.Approvals) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ap.Run(ctx); close(done) }()
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done }) }
}

// approvalLease outlasts one send with all its outbound retries (each
// waiting at most max_retry_delay, each call bounded by the 30 s client
// timeout), so the queue never takes an email whose attempt is still
// running: with the defaults, 6 x 2m30s + 1m = 16 min. A crash leaves an
// email unsent for at most this long after the restart.
func approvalLease(o config.Outbound) time.Duration {
	const callTimeout = 30 * time.Second
	return time.Duration(o.MaxRetries+1)*(o.MaxRetryDelay.Duration+callTimeout) + time.Minute
}
