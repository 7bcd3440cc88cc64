package devmode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/mail"
	"net/smtp"
	"net/url"
	"os"
	"strings"
	"time"

	"syncrelay/config"
)

// The stand-ins play the company's routing rule for one kind of message:
// the email admin page's forwarding probe (header X-Syncrelay-Probe:
// "<tenant>.<nonce>"). When a stand-in accepts one, dev mode looks up the
// tenant's inbound address through the API and delivers the copy there
// over SMTP, as Google's "Also deliver to" or Exchange's "Bcc" would, so
// Verify forwarding succeeds on one machine. Other mail is not copied: the
// demo shows the reply path with a message of its own.

const headerProbe = "X-Syncrelay-Probe"

type forwarder struct {
	c   *config.Config // read when a probe is sent: dev mode picks the ports first
	log *slog.Logger
}

func (f *forwarder) onSend(raw []byte) {
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return
	}
	v := m.Header.Get(headerProbe)
	tenant, _, ok := strings.Cut(v, ".")
	if !ok || tenant == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.forward(ctx, tenant, m.Header.Get("From"), raw); err != nil {
		f.log.Warn("dev mode: could not play the routing rule for a forwarding probe", "tenant", tenant, "err", err)
		return
	}
	f.log.Info("dev mode: played the routing rule: forwarding probe delivered to the inbound address", "tenant", tenant)
}

func (f *forwarder) forward(ctx context.Context, tenant, from string, raw []byte) error {
	tok, err := apiToken(f.c)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.c.HTTP.Listen+"/v1/tenants/"+url.PathEscape(tenant), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var t struct {
		InboundAddress string `json:"inbound_address"`
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET tenant %s: HTTP %d", tenant, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil || t.InboundAddress == "" {
		return fmt.Errorf("GET tenant %s: no inbound address (%v)", tenant, err)
	}
	sender := "postmaster@localhost"
	if a, err := mail.ParseAddress(from); err == nil {
		sender = a.Address
	}
	return smtp.SendMail(f.c.SMTP.Listen, nil, sender, []string{t.InboundAddress}, raw)
}

// apiToken is the first API token the daemon accepts: from the config, or
// the development token it generated.
func apiToken(c *config.Config) (string, error) {
	if len(c.API.Tokens) > 0 {
		return c.API.Tokens[0], nil
	}
	data, err := os.ReadFile(c.APITokenPath())
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			return l, nil
		}
	}
	return "", errors.New("no API token in " + c.APITokenPath())
}
