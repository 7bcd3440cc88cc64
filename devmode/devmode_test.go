package devmode

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"syncrelay/config"
	"syncrelay/dnsres"
	"syncrelay/outbound/providertest"
)

func TestCheckLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:2525", true},
		{"127.0.0.2:0", true},
		{"localhost:8025", true},
		{"[::1]:2525", true},
		{":2525", false},
		{"0.0.0.0:2525", false},
		{"[::]:8025", false},
		{"192.0.2.10:25", false},
		{"relay.example.com:25", false},
		{"127.0.0.1", false},
	} {
		if err := CheckLoopback(tc.addr); (err == nil) != tc.ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

func TestFreeAddr(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := freeAddr("127.0.0.1:0")
	if err != nil || strings.HasSuffix(free, ":0") || !strings.HasPrefix(free, "127.0.0.1:") {
		t.Fatalf("port 0: %q %v", free, err)
	}
	// A free configured port is kept.
	if got, err := freeAddr(free); err != nil || got != free {
		t.Errorf("free port %s: got %q %v", free, got, err)
	}
	// A taken one is replaced by another port on the same host.
	got, err := freeAddr(busy.Addr().String())
	if err != nil || got == busy.Addr().String() || !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("busy port %s: got %q %v", busy.Addr(), got, err)
	}
}

func TestSetupRefusesNonLoopback(t *testing.T) {
	for _, tc := range []struct{ smtp, http, key string }{
		{"0.0.0.0:2525", "127.0.0.1:0", "smtp.listen"},
		{"127.0.0.1:0", ":8025", "http.listen"},
		{"192.0.2.1:25", "127.0.0.1:0", "smtp.listen"},
	} {
		c := config.Default()
		c.Store.Dir = t.TempDir()
		c.SMTP.Listen, c.HTTP.Listen = tc.smtp, tc.http
		env, err := Setup(c, slog.New(slog.DiscardHandler))
		if err == nil {
			env.Close()
			t.Errorf("%s / %s: accepted", tc.smtp, tc.http)
			continue
		}
		if !strings.Contains(err.Error(), "loopback") || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s / %s: %v", tc.smtp, tc.http, err)
		}
	}
}

// TestSetup checks the config Setup produces: providers on the running
// stand-ins, a zone serving the candidate key (plus the configured zone's
// records), concrete loopback ports; Close removes what it made.
func TestSetup(t *testing.T) {
	dir := t.TempDir()
	userZone := filepath.Join(dir, "zone.txt")
	if err := os.WriteFile(userZone, []byte("s1._domainkey.other.test TXT \"v=DKIM1; p=abc\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := config.Default()
	c.Store.Dir, c.DNS.ZoneFile = dir, userZone
	c.SMTP.Listen, c.HTTP.Listen = "127.0.0.1:0", "127.0.0.1:0"
	env, err := Setup(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if strings.HasSuffix(c.SMTP.Listen, ":0") || strings.HasSuffix(c.HTTP.Listen, ":0") {
		t.Errorf("ports not resolved: %s %s", c.SMTP.Listen, c.HTTP.Listen)
	}
	g := c.Providers.Google
	if g.ClientID != providertest.ClientID || g.ClientSecret != providertest.ClientSecret ||
		g.RedirectURL != "http://"+c.HTTP.Listen+"/oauth/google/callback" {
		t.Errorf("google provider %+v", g)
	}
	for _, u := range []string{g.AuthURL, g.TokenURL, g.APIBase, c.Providers.Microsoft.AuthURL, c.Providers.Microsoft.APIBase} {
		if !strings.HasPrefix(u, "http://127.0.0.1:") {
			t.Errorf("provider URL %q is not a local stand-in", u)
		}
	}
	// The stand-in answers: the token endpoint rejects a bad client.
	resp, err := http.PostForm(g.TokenURL, map[string][]string{"grant_type": {"refresh_token"}, "client_id": {"x"}})
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("token endpoint: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	res, err := dnsres.New(dnsres.Options{ZoneFile: c.DNS.ZoneFile})
	if err != nil {
		t.Fatal(err)
	}
	txt, err := res.LookupTXT(context.Background(), Selector+"._domainkey."+CandidateDomain)
	if err != nil || len(txt) != 1 || !strings.HasPrefix(txt[0], "v=DKIM1; k=rsa; p=") {
		t.Errorf("candidate key TXT %q %v", txt, err)
	}
	if txt, err := res.LookupTXT(context.Background(), "s1._domainkey.other.test"); err != nil || len(txt) != 1 {
		t.Errorf("configured zone's record lost: %q %v", txt, err)
	}
	// The demo can sign with the key the zone publishes.
	d := &Demo{State: env.state, Out: io.Discard}
	if _, err := d.sign("From: a@cand.test\r\nSubject: x\r\n\r\nhi\r\n"); err != nil {
		t.Errorf("sign: %v", err)
	}

	zone := c.DNS.ZoneFile
	env.Close()
	if _, err := os.Stat(zone); !os.IsNotExist(err) {
		t.Errorf("zone file left after Close: %v", err)
	}
	if _, err := http.Get(g.TokenURL); err == nil {
		t.Error("stand-in still answering after Close")
	}
}

func TestReadStateMissingSaysWhatToDo(t *testing.T) {
	_, err := ReadState(filepath.Join(t.TempDir(), StateFileName))
	if err == nil || !strings.Contains(err.Error(), "serve -dev") {
		t.Fatalf("err %v", err)
	}
}
