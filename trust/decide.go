package trust

import (
	"fmt"
	"strings"

	"github.com/emersion/go-msgauth/authres"
)

// aligned reports relaxed alignment of a DKIM d= with the From domain: equal,
// or From is a subdomain of d=. This is the simple rule the SPEC asks for,
// not a Public Suffix List organisational-domain check; a single-label d=
// ("com") never aligns.
func aligned(d, from string) bool {
	d = normDomain(d)
	from = normDomain(from)
	if d == "" || from == "" || !strings.Contains(d, ".") {
		return false
	}
	return from == d || strings.HasSuffix(from, "."+d)
}

func normDomain(s string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
}

func inList(d string, list []string) bool {
	d = normDomain(d)
	if d == "" {
		return false
	}
	for _, x := range list {
		if normDomain(x) == d {
			return true
		}
	}
	return false
}

// acceptable reports whether a passing DKIM domain counts for this tenant.
func acceptable(d, from string, tenantDomains []string) (bool, string) {
	if aligned(d, from) {
		return true, "aligned with From " + normDomain(from)
	}
	if inList(d, tenantDomains) {
		return true, "a tenant domain"
	}
	return false, ""
}

// Decide applies the tenant's "require" DKIM policy (SPEC §5). A message
// passes with
//   - a DKIM pass whose d= is aligned with the From domain (equal, or From is
//     a subdomain of d=) or equals one of tenantDomains; or
//   - an ARC chain that passes, whose last ARC-Seal is by one of
//     trustedSealers (d= equal, case-insensitive), and whose
//     ARC-Authentication-Results report a dkim=pass for a domain that is
//     itself acceptable by the rule above. Requiring the reported pass to be
//     aligned is deliberate: a sealer honestly reporting "dkim=pass" for an
//     attacker's own domain on a message with a forged From must not let it
//     in.
//
// rsa-sha1, RSA < 1024 bits and l= signatures never count (Verify reports
// them as "policy"). When Decide returns false and v.Temporary is set, the
// failure may be transient: answer 451 4.4.3 rather than 550 5.7.1.
func Decide(v Verdict, tenantDomains, trustedSealers []string) (pass bool, reason string) {
	for _, r := range v.DKIM {
		if r.Result != ResultPass {
			continue
		}
		if ok, why := acceptable(r.Domain, v.FromDomain, tenantDomains); ok {
			return true, fmt.Sprintf("dkim=pass d=%s (%s)", r.Domain, why)
		}
	}
	if v.ARC.Result == ARCPass && inList(v.ARC.Sealer, trustedSealers) {
		for _, r := range v.ARC.OriginalDKIM {
			if r.Result != ResultPass {
				continue
			}
			if ok, why := acceptable(r.Domain, v.FromDomain, tenantDomains); ok {
				return true, fmt.Sprintf("arc=pass sealed by trusted %s, which reports dkim=pass d=%s (%s)", v.ARC.Sealer, r.Domain, why)
			}
		}
	}
	return false, failReason(v, trustedSealers)
}

func failReason(v Verdict, trustedSealers []string) string {
	var parts []string
	if v.Temporary {
		parts = append(parts, "temporary DNS failure fetching a key")
	}
	if len(v.DKIM) == 0 {
		parts = append(parts, "no DKIM signature")
	} else {
		var passes, fails []string
		for _, r := range v.DKIM {
			if r.Result == ResultPass {
				passes = append(passes, r.Domain)
			} else {
				fails = append(fails, fmt.Sprintf("d=%s %s (%s)", r.Domain, r.Result, r.Reason))
			}
		}
		if len(passes) > 0 {
			from := v.FromDomain
			if from == "" {
				from = "unknown"
			}
			parts = append(parts, fmt.Sprintf("dkim=pass only for %s, not aligned with From domain %s", strings.Join(passes, ", "), from))
		}
		parts = append(parts, fails...)
	}
	switch v.ARC.Result {
	case "", ARCNone:
	case ARCPass:
		if !inList(v.ARC.Sealer, trustedSealers) {
			parts = append(parts, fmt.Sprintf("ARC chain sealed by untrusted %s", v.ARC.Sealer))
		} else {
			parts = append(parts, fmt.Sprintf("ARC chain sealed by %s reports no acceptable dkim=pass", v.ARC.Sealer))
		}
	default:
		parts = append(parts, fmt.Sprintf("arc=%s (%s)", v.ARC.Result, v.ARC.Reason))
	}
	return "DKIM policy: " + strings.Join(parts, "; ")
}

// AuthResults renders the verdict as the value of an Authentication-Results
// header field (RFC 8601) for authserv-id hostname, with go-msgauth's
// authres.Format: one dkim result per verified signature (dkim=none when
// there is none) and an arc result when the message has ARC sets.
// Free-text reasons are sanitised so the field always parses back with
// authres.Parse (which splits on ';' and does not handle quoting or
// comments).
func AuthResults(hostname string, v Verdict) string {
	var results []authres.Result
	for _, r := range v.DKIM {
		results = append(results, &authres.DKIMResult{
			Value:      authres.ResultValue(r.Result),
			Reason:     cleanReason(r.Reason),
			Domain:     cleanToken(r.Domain),
			Identifier: cleanToken(r.Identifier),
		})
	}
	if len(v.DKIM) == 0 {
		results = append(results, &authres.DKIMResult{Value: authres.ResultNone})
	}
	if v.ARC.Result != "" && v.ARC.Result != ARCNone {
		// authres.Format has no case for *authres.ARCResult (it would print
		// an empty method): use a GenericResult, which parses back as ARC.
		params := map[string]string{"reason": cleanReason(v.ARC.Reason)}
		if v.ARC.Sealer != "" {
			params["header.d"] = cleanToken(v.ARC.Sealer)
		}
		results = append(results, &authres.GenericResult{
			Method: "arc",
			Value:  authres.ResultValue(v.ARC.Result),
			Params: params,
		})
	}
	return authres.Format(cleanToken(hostname), results)
}

// cleanReason keeps a reason readable but unable to break the field:
// no ';', '"', '\\', '(', ')', '=', control characters or non-ASCII.
func cleanReason(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r < ' ' || r > '~' || strings.ContainsRune(`;"\()=`, r):
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	out := strings.Join(strings.Fields(b.String()), " ")
	if len(out) > 200 {
		out = out[:200]
	}
	return out
}

// cleanToken keeps domain/identifier characters only (values come from
// untrusted headers).
func cleanToken(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_@+", r) {
			b.WriteRune(r)
		}
	}
	return b.String()
}
