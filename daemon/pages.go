package daemon

import (
	"log/slog"
	"net/http"

	"syncrelay/config"
	"syncrelay/outbound"
	"syncrelay/pages"
	"syncrelay/signedlink"
)

// newPages builds the hosted pages (/p/...): links signed with the links
// key, probes sent through the outbound service (nil: not configured).
func newPages(c *config.Config, st Store, keys *Keys, sender *outbound.Service, log *slog.Logger) (*pages.Server, error) {
	o := pages.Options{
		Store: st, Links: signedlink.New(keys.Links, nil), CSRFKey: keys.Links,
		PublicURL: c.PublicBaseURL(), Hostname: c.SMTP.Hostname, Log: log,
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
