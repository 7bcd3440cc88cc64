package dnsres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// client asks recursive resolvers directly with github.com/miekg/dns.
//
// Why not net.Resolver with a custom Dial: net.Resolver folds SERVFAIL,
// REFUSED, timeouts and NXDOMAIN into one *net.DNSError whose IsNotFound /
// IsTemporary classification differs between the pure-Go and cgo resolvers
// and between platforms, applies search domains and ndots, and hides record
// TTLs. The temporary/permanent split is the whole point here (a wrong
// "permanent" bounces a legitimate message, a wrong "temporary" makes the
// sender retry for days), so we read the rcode ourselves, honour the TTL, use
// a random query ID per query (miekg does), send EDNS0 with a 1232-byte UDP
// size and retry over TCP when the answer is truncated.
type client struct {
	servers []string
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client
}

// ednsSize is the DNS flag day 2020 recommendation: avoids IP fragmentation.
const ednsSize = 1232

func newClient(servers []string, timeout time.Duration) *client {
	return &client{
		servers: servers,
		timeout: timeout,
		udp:     &dns.Client{Net: "udp", UDPSize: ednsSize, Timeout: timeout},
		tcp:     &dns.Client{Net: "tcp", Timeout: timeout},
	}
}

// lookup returns the TXT records of name (already normalized), the smallest
// TTL of the answer, or an error as documented in the package comment.
func (c *client) lookup(ctx context.Context, name string) ([]string, uint32, error) {
	fqdn := dns.Fqdn(name)
	var lastErr error
	for i, server := range c.servers {
		if err := ctx.Err(); err != nil {
			if lastErr == nil {
				lastErr = contextError(name, err)
			}
			break
		}
		// Give each server a fair share of what is left, so one dead server
		// does not eat the whole budget.
		actx, cancel := ctx, context.CancelFunc(func() {})
		if left := len(c.servers) - i; left > 1 {
			if dl, ok := ctx.Deadline(); ok {
				share := time.Until(dl) / time.Duration(left)
				actx, cancel = context.WithTimeout(ctx, max(share, 500*time.Millisecond))
			}
		}
		txts, ttl, err := c.ask(actx, fqdn, name, server)
		cancel()
		if err == nil || IsNotFound(err) {
			return txts, ttl, err
		}
		lastErr = err
	}
	return nil, 0, lastErr
}

func (c *client) ask(ctx context.Context, fqdn, name, server string) ([]string, uint32, error) {
	m := new(dns.Msg)
	m.SetQuestion(fqdn, dns.TypeTXT)
	m.RecursionDesired = true
	m.SetEdns0(ednsSize, false)

	resp, err := c.exchange(ctx, m, server)
	if err == nil && resp.Rcode == dns.RcodeFormatError {
		// A server that does not understand EDNS0: ask again without it.
		m = new(dns.Msg)
		m.SetQuestion(fqdn, dns.TypeTXT)
		m.RecursionDesired = true
		resp, err = c.exchange(ctx, m, server)
	}
	if err != nil {
		return nil, 0, temporary(name, "lookup failed: "+err.Error(), server, err)
	}
	if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, fqdn) ||
		resp.Question[0].Qtype != dns.TypeTXT {
		return nil, 0, temporary(name, "answer does not match the question", server, nil)
	}

	switch resp.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, 0, notFound(name, "no such host (NXDOMAIN)", server)
	default:
		rc, ok := dns.RcodeToString[resp.Rcode]
		if !ok {
			rc = "rcode " + strconv.Itoa(resp.Rcode)
		}
		return nil, 0, temporary(name, "server answered "+rc, server, nil)
	}

	// Follow CNAMEs inside the answer section (a recursive resolver puts the
	// whole chain there); keep only TXT records owned by a name on the chain.
	owners := map[string]bool{strings.ToLower(fqdn): true}
	for changed := true; changed; {
		changed = false
		for _, rr := range resp.Answer {
			if cn, ok := rr.(*dns.CNAME); ok && owners[strings.ToLower(cn.Hdr.Name)] && !owners[strings.ToLower(cn.Target)] {
				owners[strings.ToLower(cn.Target)] = true
				changed = true
			}
		}
	}
	var txts []string
	ttl := uint32(1<<32 - 1)
	for _, rr := range resp.Answer {
		h := rr.Header()
		if !owners[strings.ToLower(h.Name)] {
			continue
		}
		ttl = min(ttl, h.Ttl)
		if t, ok := rr.(*dns.TXT); ok {
			var b strings.Builder
			for _, s := range t.Txt {
				b.WriteString(unescapeTXT(s))
			}
			txts = append(txts, b.String())
		}
	}
	if len(txts) == 0 {
		return nil, 0, notFound(name, "no TXT record (NODATA)", server)
	}
	return txts, ttl, nil
}

// exchange sends m over UDP and, when the answer is truncated, over TCP.
func (c *client) exchange(ctx context.Context, m *dns.Msg, server string) (*dns.Msg, error) {
	resp, _, err := c.udp.ExchangeContext(ctx, m, server)
	if err != nil {
		return nil, err
	}
	if resp.Truncated {
		resp, _, err = c.tcp.ExchangeContext(ctx, m, server)
		if err != nil {
			return nil, fmt.Errorf("tcp retry after truncated answer: %w", err)
		}
	}
	return resp, nil
}

// unescapeTXT undoes miekg/dns's presentation escaping of a character-string
// (\" \\ and \DDD).
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b = append(b, s[i])
			continue
		}
		i++
		if i+2 < len(s) && isDigit(s[i]) && isDigit(s[i+1]) && isDigit(s[i+2]) {
			n := int(s[i]-'0')*100 + int(s[i+1]-'0')*10 + int(s[i+2]-'0')
			b = append(b, byte(n))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
