// Package setup renders the routing rules an email admin creates so that
// a tenant's mail reaches syncrelay (SPEC §9), for `syncrelay check` and
// the tenant API alike.
package setup

import (
	"fmt"
	"io"
	"regexp"
	"strings"

	"syncrelay/store"
	"syncrelay/token"
)

// Rules are the routing rules an email admin creates for a tenant.
type Rules struct {
	ID             string        `json:"id"`
	Provider       string        `json:"provider"`
	InboundAddress string        `json:"inbound_address"`
	Google         GoogleRule    `json:"google_workspace"`
	Exchange       ExchangeRules `json:"exchange_online"`
}

// GoogleRule is one Google Workspace content compliance rule.
type GoogleRule struct {
	Name        string   `json:"name"`
	Directions  []string `json:"directions"`
	Location    string   `json:"location"`
	MatchType   string   `json:"match_type"`
	Regex       string   `json:"regex"`
	AlsoDeliver string   `json:"also_deliver_to"`
}

// ExchangeRules are the Exchange Online mail flow rules, also as PowerShell.
type ExchangeRules struct {
	Rules      []ExchangeRule `json:"rules"`
	PowerShell []string       `json:"powershell"`
}

// ExchangeRule is one Exchange Online mail flow rule.
type ExchangeRule struct {
	Name    string `json:"name"`
	Header  string `json:"header"`
	Pattern string `json:"pattern"`
	Bcc     string `json:"bcc"`
}

// For builds the rules for tenant t on a relay named hostname.
//
// Exchange Online's mail flow rules support only a small regex subset
// (\S \s \d \D \w \W | * ( ) \ ^ $; no [classes] or +), so its pattern
// spells the token as \w*. X-Syncrelay-Thread carries the bare token.
// Thread-Index gets a rule of its own on syncrelay's fixed prefix (SPEC §3):
// Outlook replies may keep only that header, and without the rule they
// would never reach matching rule 4.
func For(hostname string, t *store.Tenant) *Rules {
	kr, _ := token.New(make([]byte, token.MinSecretLen), hostname)
	marker := kr.Marker() // sr\.[a-z0-9]+@host
	host := regexp.QuoteMeta(kr.Hostname())
	exMarker := `sr\.\w*@` + host
	// The prefix is base64 (letters and digits only here), so it is its
	// own pattern in both dialects. Both match case-insensitively, which
	// does not widen it to Outlook's values: their third character is H
	// since 2000 (the prefix has G), and the prefix's 48 bits name an
	// instant in 1994.
	tiPrefix := regexp.QuoteMeta(token.ThreadIndexPrefix)
	name := "syncrelay " + t.ID
	r := &Rules{ID: t.ID, Provider: t.Provider, InboundAddress: t.InboundAddress,
		Google: GoogleRule{
			Name:        name,
			Directions:  []string{"Inbound", "Outbound", "Internal - sending", "Internal - receiving"},
			Location:    "Full headers",
			MatchType:   "Matches regex",
			Regex:       "(?i)" + marker + `|x-syncrelay-thread:|thread-index:\s*` + tiPrefix,
			AlsoDeliver: t.InboundAddress,
		},
	}
	for _, h := range []struct{ header, pattern string }{
		{"References", exMarker}, {"In-Reply-To", exMarker}, {"X-Syncrelay-Thread", `^\w\w*$`},
		{"Thread-Index", "^" + tiPrefix},
	} {
		rn := name + ": " + h.header
		r.Exchange.Rules = append(r.Exchange.Rules, ExchangeRule{Name: rn, Header: h.header, Pattern: h.pattern, Bcc: t.InboundAddress})
		r.Exchange.PowerShell = append(r.Exchange.PowerShell, fmt.Sprintf(
			"New-TransportRule -Name '%s' -HeaderMatchesMessageHeader '%s' -HeaderMatchesPatterns '%s' -BlindCopyTo '%s' -Mode Enforce",
			rn, h.header, h.pattern, t.InboundAddress))
	}
	return r
}

// Print writes the rules as step-by-step instructions.
func (r *Rules) Print(w io.Writer) {
	google := func() {
		g := r.Google
		fmt.Fprintf(w, `Google Workspace: content compliance rule
  admin.google.com > Apps > Google Workspace > Gmail > Compliance > Content compliance > Configure
  1. Content compliance:   %s
  2. Email messages to affect: tick all four: %s
  3. Add expressions that describe the content you want to search for in each message:
       If ANY of the following match the message > Add > Advanced content match
         Location:    %s
         Match type:  %s
         Expression:  %s
  4. If the above expressions match, do the following: Modify message
       Also deliver to > Add more recipients > Add > Basic > %s
  5. Save. Changes take effect within an hour (usually minutes).
`, g.Name, strings.Join(g.Directions, ", "), g.Location, g.MatchType, g.Regex, g.AlsoDeliver)
	}
	exchange := func() {
		fmt.Fprintf(w, `Exchange Online: mail flow rules
  Exchange admin center > Mail flow > Rules > + Add a rule > Create a new rule. Create these %d rules
  (the conditions of one rule must all match, so each header needs its own rule):
`, len(r.Exchange.Rules))
		for i, x := range r.Exchange.Rules {
			fmt.Fprintf(w, `  %d. Name:               %s
     Apply this rule if: The message headers... > matches these text patterns
                         header name: %s
                         pattern:     %s
     Do the following:   Add recipients > to the Bcc box > %s
     Rule mode Enforce; leave "Stop processing more rules" unticked.
`, i+1, x.Name, x.Header, x.Pattern, x.Bcc)
		}
		fmt.Fprintln(w, "  Or in Exchange Online PowerShell (Connect-ExchangeOnline):")
		for _, ps := range r.Exchange.PowerShell {
			fmt.Fprintln(w, "    "+ps)
		}
	}
	fmt.Fprintf(w, "\nTenant %s (%s): inbound address %s\n\n", r.ID, r.Provider, r.InboundAddress)
	if r.Provider == "microsoft" {
		exchange()
		fmt.Fprintln(w, "\n(If the tenant's mail were on Google Workspace instead:)")
		google()
	} else {
		google()
		fmt.Fprintln(w, "\n(If the tenant's mail were on Exchange Online instead:)")
		exchange()
	}
	fmt.Fprintf(w, "\nThen send a message from the ATS and look at GET /v1/tenants/%s/status: forwarding becomes \"ok\".\n", r.ID)
}
