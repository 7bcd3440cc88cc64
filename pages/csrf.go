package pages

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
)

// CSRF: double-submit, bound to the signed link. A GET of a page sets a
// random cookie (HttpOnly, SameSite=Strict) if the browser has none; each
// form carries HMAC(key, cookie, link token) in a hidden field. A POST is
// accepted only when the field matches the cookie it came with and the
// link it names: another site can neither read the cookie nor compute
// the field, and a field taken from one link's page is worthless for
// another link.

// CSRFCookie is the name of the CSRF cookie.
const CSRFCookie = "sr_csrf"

// CSRFField is the name of the hidden form field.
const CSRFField = "csrf"

func (s *Server) csrfMAC(cookie, link string) string {
	m := hmac.New(sha256.New, s.o.CSRFKey)
	m.Write([]byte("syncrelay-pages-csrf-v1\x00" + cookie + "\x00" + link))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfToken returns the form value for link, setting the cookie when the
// request has none.
func (s *Server) csrfToken(w http.ResponseWriter, r *http.Request, link string) string {
	v := ""
	if c, err := r.Cookie(CSRFCookie); err == nil && len(c.Value) >= 22 {
		v = c.Value
	} else {
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		v = base64.RawURLEncoding.EncodeToString(b)
		http.SetCookie(w, &http.Cookie{
			Name: CSRFCookie, Value: v, Path: "/p/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
			Secure: strings.HasPrefix(s.o.PublicURL, "https://"),
		})
	}
	return s.csrfMAC(v, link)
}

// csrfOK checks a POST's form field against its cookie and link, and its
// Origin (when the browser sends one) against the public URL or Host.
func (s *Server) csrfOK(r *http.Request, link string) bool {
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		if o != s.o.PublicURL && o != "http://"+r.Host && o != "https://"+r.Host {
			return false
		}
	}
	c, err := r.Cookie(CSRFCookie)
	if err != nil || c.Value == "" {
		return false
	}
	got := r.PostFormValue(CSRFField)
	return got != "" && hmac.Equal([]byte(got), []byte(s.csrfMAC(c.Value, link)))
}
