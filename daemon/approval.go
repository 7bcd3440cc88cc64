package daemon

import (
	"log/slog"

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
	o := delegation.Options{Store: st, Signer: signedlink.New(keys.Links, nil), BaseURL: c.PublicBaseURL(), Log: log}
	if sender != nil {
		o.Sender = sender
	}
	return delegation.New(o)
}
