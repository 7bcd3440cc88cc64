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

// Owner is what a tenant calls its own signing domains (SPEC §5): a
// passing signature by one of them counts whatever the From domain.
type Owner struct {
	// Domains are the tenant's domains.
	Domains []string
	// SigningDomains are further d= values the tenant signs with: its
	// signing_domains (acme.onmicrosoft.com, an email service provider's
	// domain). Exact match only.
	SigningDomains []string
	// Google is set for Google Workspace tenants: without a custom DKIM key
	// Google signs with d=<tenant domain, dots as hyphens>.<digits>.gappssmtp.com.
	Google bool
}

// owns reports whether d is one of the tenant's own signing domains.
func (o Owner) owns(d string) (bool, string) {
	switch {
	case inList(d, o.Domains):
		return true, "a tenant domain"
	case inList(d, o.SigningDomains):
		return true, "a signing domain of the tenant"
	case o.Google && GoogleDefaultDomain(d, o.Domains):
		return true, "Google's default signing domain for a tenant domain"
	}
	return false, ""
}

// GoogleDefaultDomain reports whether d is the domain Google Workspace
// signs with for one of domains when it has no custom DKIM key:
// <domain with dots as hyphens>.<digits>.gappssmtp.com. The digits label
// is Google's and cannot be known in advance; everything else must match
// exactly, so another company's (or a look-alike) gappssmtp.com domain
// does not count.
func GoogleDefaultDomain(d string, domains []string) bool {
	rest, ok := strings.CutSuffix(normDomain(d), ".gappssmtp.com")
	if !ok {
		return false
	}
	dot := strings.LastIndexByte(rest, '.')
	if dot <= 0 || !allDigits(rest[dot+1:]) {
		return false
	}
	label := rest[:dot]
	for _, td := range domains {
		if td = normDomain(td); td != "" && strings.ReplaceAll(td, ".", "-") == label {
			return true
		}
	}
	return false
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// acceptable reports whether a passing DKIM domain counts for this tenant.
func acceptable(d, from string, o Owner) (bool, string) {
	if aligned(d, from) {
		return true, "aligned with From " + normDomain(from)
	}
	return o.owns(d)
}

// Decide is DecideFor with only the tenant's domains as its own.
func Decide(v Verdict, tenantDomains, trustedSealers []string) (pass bool, reason string) {
	return DecideFor(v, Owner{Domains: tenantDomains}, trustedSealers)
}

// DecideFor applies the tenant's "require" DKIM policy (SPEC §5). A
// message passes with
//   - a DKIM pass whose d= is aligned with the From domain (equal, or From is
//     a subdomain of d=) or is one of the tenant's own signing domains
//     (Owner); or
//   - an ARC chain that passes, whose last ARC-Seal is by one of
//     trustedSealers (d= equal, case-insensitive), and whose
//     ARC-Authentication-Results report a dkim=pass for a domain that is
//     itself acceptable by the rule above. Requiring the reported pass to be
//     aligned is deliberate: a sealer honestly reporting "dkim=pass" for an
//     attacker's own domain on a message with a forged From must not let it
//     in.
//
// rsa-sha1, RSA < 1024 bits and l= signatures never count (Verify reports
// them as "policy"). When DecideFor returns false and v.Temporary is set,
// the failure may be transient: answer 451 4.4.3 rather than 550 5.7.1.
// The reason is for the log: it quotes resolver errors (ReplyReason is the
// text for the SMTP client).
func DecideFor(v Verdict, o Owner, trustedSealers []string) (pass bool, reason string) {
	for _, r := range v.DKIM {
		if r.Result != ResultPass {
			continue
		}
		if ok, why := acceptable(r.Domain, v.FromDomain, o); ok {
			return true, fmt.Sprintf("dkim=pass d=%s (%s)", r.Domain, why)
		}
	}
	if v.ARC.Result == ARCPass && inList(v.ARC.Sealer, trustedSealers) {
		for _, r := range v.ARC.OriginalDKIM {
			if r.Result != ResultPass {
				continue
			}
			if ok, why := acceptable(r.Domain, v.FromDomain, o); ok {
				return true, fmt.Sprintf("arc=pass sealed by trusted %s, which reports dkim=pass d=%s (%s)", v.ARC.Sealer, r.Domain, why)
			}
		}
	}
	return false, failReason(v, trustedSealers, false)
}

// PassedDomains lists the d= of the DKIM signatures that verified. After a
// failed DecideFor, none of them is aligned or the tenant's own.
func PassedDomains(v Verdict) []string {
	var out []string
	for _, r := range v.DKIM {
		if r.Result == ResultPass {
			out = append(out, r.Domain)
		}
	}
	return out
}

// ReplyReason explains a failed DecideFor to the SMTP client: the same
// outline as the logged reason, but only domains, results and fixed
// wording, never a resolver's address, a zone file's path or a Go error
// (SPEC §5: the detail goes to the log).
func ReplyReason(v Verdict, trustedSealers []string) string {
	s := failReason(v, trustedSealers, true)
	if len(s) > maxReplyReason {
		s = s[:maxReplyReason-3] + "..."
	}
	return s
}

// maxReplyReason keeps the reply line well under RFC 5321's 512 octets.
const maxReplyReason = 400

// failReason outlines why nothing acceptable passed. public keeps to
// domains, result words and fixed texts (ReplyReason); otherwise the
// verifier's own reasons are quoted, for the log.
func failReason(v Verdict, trustedSealers []string, public bool) string {
	dom := func(d string) string { return d }
	if public {
		dom = cleanToken
	}
	var parts []string
	if v.Temporary {
		parts = append(parts, "temporary DNS failure fetching a key")
	}
	if len(v.DKIM) == 0 {
		parts = append(parts, "no DKIM signature")
	} else {
		var passes, fails []string
		for _, r := range v.DKIM {
			switch {
			case r.Result == ResultPass:
				passes = append(passes, dom(r.Domain))
			case public:
				fails = append(fails, fmt.Sprintf("d=%s %s (%s)", dom(r.Domain), cleanToken(r.Result), publicDKIMReason(r)))
			default:
				fails = append(fails, fmt.Sprintf("d=%s %s (%s)", r.Domain, r.Result, r.Reason))
			}
		}
		if len(passes) > 0 {
			from := dom(v.FromDomain)
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
			parts = append(parts, fmt.Sprintf("ARC chain sealed by untrusted %s", dom(v.ARC.Sealer)))
		} else {
			parts = append(parts, fmt.Sprintf("ARC chain sealed by %s reports no acceptable dkim=pass", dom(v.ARC.Sealer)))
		}
	default:
		if public {
			parts = append(parts, "arc="+cleanToken(v.ARC.Result))
		} else {
			parts = append(parts, fmt.Sprintf("arc=%s (%s)", v.ARC.Result, v.ARC.Reason))
		}
	}
	return "DKIM policy: " + strings.Join(parts, "; ")
}

// publicDKIMReason is why a signature did not pass, in words fit for an
// SMTP reply: go-msgauth's fixed reasons without what they wrap (a
// resolver error names the resolver or the zone file; a key parse error
// is Go's text), else a generic phrase per result.
func publicDKIMReason(r Result) string {
	switch r.Result {
	case ResultPolicy:
		return r.Reason // ours, from fixed texts (dkimResult)
	case ResultTempError:
		return "key temporarily unavailable"
	}
	head, _, _ := strings.Cut(r.Reason, ":")
	if publicReasons[head] {
		return head
	}
	if r.Result == ResultPermError {
		return "no usable key or malformed signature"
	}
	return "signature did not verify"
}

// publicReasons are go-msgauth's (v0.7) and dkimResult's fixed reasons, up
// to their first ':'.
var publicReasons = map[string]bool{
	"key unavailable": true, "no key for signature": true, "no valid key found": true,
	"multiple TXT records found for key": true, "key record error": true, "incompatible public key version": true,
	"key syntax error": true, "key revoked": true, "key is too short": true, "invalid Ed25519 public key size": true,
	"unsupported key algorithm": true, "malformed signature tags": true, "incompatible signature version": true,
	"signature missing required tag": true, "domain mismatch": true, "From field not signed": true,
	"malformed time": true, "malformed expiration time": true, "signature has expired": true,
	"unsupported public key query method": true, "malformed algorithm name": true, "inappropriate hash algorithm": true,
	"hash algorithm too weak": true, "unsupported hash algorithm": true, "inappropriate key algorithm": true,
	"inappropriate service": true, "unsupported header canonicalization algorithm": true,
	"unsupported body canonicalization algorithm": true, "message contains an insecure body length tag": true,
	"malformed body hash": true, "malformed signature": true, "body hash did not verify": true,
	"signature did not verify": true,
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
