package main

// Temporary: keeps the module's dependencies listed while packages are written.
import (
	_ "github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset"
	_ "github.com/emersion/go-message/textproto"
	_ "github.com/emersion/go-msgauth/authres"
	_ "github.com/emersion/go-msgauth/dkim"
	_ "github.com/emersion/go-smtp"
	_ "github.com/miekg/dns"
	_ "github.com/pelletier/go-toml/v2"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/oauth2"
	_ "golang.org/x/oauth2/google"
	_ "golang.org/x/oauth2/microsoft"
	_ "golang.org/x/sync/singleflight"
)
