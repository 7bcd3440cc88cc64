package outbound

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Provider sends one composed message through a user's mailbox.
type Provider interface {
	// Name is "google" or "microsoft".
	Name() string
	// Send submits raw (CRLF MIME) with the user's access token. Errors
	// are *Error when the provider answered.
	Send(ctx context.Context, accessToken string, raw []byte) (Sent, error)
}

// Sent is what the provider says about an accepted message.
type Sent struct {
	// ProviderID is the provider's id of the sent message ("" for Graph,
	// whose sendMail answers 202 with no body).
	ProviderID string
	// ProviderThread is Gmail's threadId.
	ProviderThread string
}

// Error is a provider's refusal or failure.
type Error struct {
	Provider string
	// Status is the HTTP status; 0 for a transport error.
	Status int
	// Code is the provider's error code or reason (e.g. "ErrorSendAsDenied",
	// "userRateLimitExceeded").
	Code    string
	Message string
	// RetryAfter is the provider's Retry-After, if any.
	RetryAfter time.Duration
	// Temporary: worth retrying later (429, 5xx, rate-limit 403s,
	// transport errors).
	Temporary bool
	// Unauthorized: the access token was refused (401); a refreshed token
	// may work.
	Unauthorized bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Provider)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	return b.String()
}

const maxErrorBody = 64 << 10

// Gmail sends through the Gmail API users.messages.send with the
// gmail.send scope: POST {BaseURL}/gmail/v1/users/me/messages/send with
// {"raw": base64url(MIME)}.
type Gmail struct {
	// BaseURL is e.g. https://gmail.googleapis.com (no trailing slash).
	BaseURL string
	Client  *http.Client
}

// Name implements Provider.
func (g *Gmail) Name() string { return "google" }

// Send implements Provider.
func (g *Gmail) Send(ctx context.Context, accessToken string, raw []byte) (Sent, error) {
	body, err := json.Marshal(map[string]string{"raw": base64.URLEncoding.EncodeToString(raw)})
	if err != nil {
		return Sent{}, err
	}
	resp, err := do(ctx, g.Client, g.Name(), g.BaseURL+"/gmail/v1/users/me/messages/send", "application/json", accessToken, body)
	if err != nil {
		return Sent{}, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if resp.StatusCode == http.StatusOK {
		var m struct {
			ID       string `json:"id"`
			ThreadID string `json:"threadId"`
		}
		_ = json.Unmarshal(data, &m) // an unparseable 200 is still a send
		return Sent{ProviderID: m.ID, ProviderThread: m.ThreadID}, nil
	}
	return Sent{}, classify(g.Name(), resp, data)
}

// Graph sends MIME through Microsoft Graph sendMail with the Mail.Send
// scope: POST {BaseURL}/me/sendMail, Content-Type text/plain, the base64
// MIME as body; Graph answers 202 and saves the message to Sent Items.
type Graph struct {
	// BaseURL is e.g. https://graph.microsoft.com/v1.0 (no trailing slash).
	BaseURL string
	Client  *http.Client
}

// Name implements Provider.
func (g *Graph) Name() string { return "microsoft" }

// Send implements Provider.
func (g *Graph) Send(ctx context.Context, accessToken string, raw []byte) (Sent, error) {
	body := []byte(base64.StdEncoding.EncodeToString(raw))
	resp, err := do(ctx, g.Client, g.Name(), g.BaseURL+"/me/sendMail", "text/plain", accessToken, body)
	if err != nil {
		return Sent{}, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK {
		return Sent{}, nil
	}
	return Sent{}, classify(g.Name(), resp, data)
}

func do(ctx context.Context, c *http.Client, provider, url, ctype, accessToken string, body []byte) (*http.Response, error) {
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Provider: provider, Message: "bad api_base: " + err.Error()}
	}
	req.Header.Set("Authorization", "Bearer "+accessToken)
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// The request may or may not have reached the provider; a retry
		// risks a duplicate, a lost send is worse (see docs/outbound.md).
		msg := err.Error()
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			msg = ue.Unwrap().Error() // drop the URL
		}
		return nil, &Error{Provider: provider, Message: "request failed: " + msg, Temporary: true}
	}
	return resp, nil
}

// classify turns a non-success answer into an *Error.
func classify(provider string, resp *http.Response, body []byte) *Error {
	e := &Error{Provider: provider, Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	var env struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && len(env.Error) > 0 {
		var obj struct {
			Code    json.RawMessage `json:"code"`
			Message string          `json:"message"`
			Status  string          `json:"status"`
			Errors  []struct {
				Reason string `json:"reason"`
			} `json:"errors"`
		}
		if json.Unmarshal(env.Error, &obj) == nil {
			e.Message = obj.Message
			var sc string
			if json.Unmarshal(obj.Code, &sc) == nil {
				e.Code = sc // Graph: {"code":"ErrorSendAsDenied"}
			}
			if len(obj.Errors) > 0 && obj.Errors[0].Reason != "" {
				e.Code = obj.Errors[0].Reason // Gmail: errors[0].reason
			} else if e.Code == "" {
				e.Code = obj.Status
			}
		} else {
			var s string
			if json.Unmarshal(env.Error, &s) == nil { // {"error":"..."}
				e.Code = s
			}
		}
	}
	if e.Message == "" && e.Code == "" {
		e.Message = strings.TrimSpace(string(body))
	}
	e.Message = clean(e.Message, 300)
	e.Code = clean(e.Code, 80)
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		e.Unauthorized = true
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusRequestTimeout:
		e.Temporary = true
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		e.Temporary = true
	case resp.StatusCode == http.StatusForbidden:
		// Gmail reports its per-user and per-project rate limits as 403.
		switch e.Code {
		case "rateLimitExceeded", "userRateLimitExceeded", "concurrentLimitExceeded":
			e.Temporary = true
		}
	}
	return e
}

// retryAfter parses a Retry-After value: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0
		}
		if n > 86400 {
			n = 86400
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// clean keeps text printable and bounded for storing on a message.
func clean(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		cut := max
		for cut > 0 && s[cut]&0xc0 == 0x80 { // do not split a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
