package pages_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"syncrelay/internal/browsertest"
)

func present(b *browsertest.Browser, id string) bool {
	return browsertest.Get(b, chromedp.Evaluate[bool](`document.getElementById(`+"`"+id+"`"+`) !== null`))
}

func state(b *browsertest.Browser) string {
	return browsertest.Get(b, chromedp.AttributeValue(chromedp.CSS("#state"), "data-state")).Value
}

func bodyText(b *browsertest.Browser) string {
	return browsertest.Get(b, chromedp.Text(chromedp.CSS("body")))
}

// TestDelegationBrowser drives the Send For approval page in headless
// Chromium from the link emailed through the requester's grant: approve
// (then the API shows the delegation active), open the used link again,
// decline another request, and the expired and tampered link pages. A
// screenshot of each page is saved (browsertest.OutputDir).
func TestDelegationBrowser(t *testing.T) {
	t.Parallel() // each has its own daemon or env, browser and ports; they mostly wait
	browser := browsertest.Starting(t)
	e := newApprovalEnv(t) // while Chromium starts
	e.connect("u-rec")

	// Approve from the emailed link.
	id, link := e.request("u-rec", "u-hm")
	b := browser()
	b.Do(chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS("#approve")))
	if got := bodyText(b); !strings.Contains(got, "Rita") || !strings.Contains(got, "hm@acme.test") || state(b) != "requested" {
		t.Fatalf("request page: state %q\n%s", state(b), got)
	}
	b.Screenshot(t, "request")
	b.Do(chromedp.Click(chromedp.CSS("#approve")), chromedp.WaitVisible(chromedp.CSS("#done")))
	if s := state(b); s != "active" || present(b, "approve") || !strings.Contains(bodyText(b), "You approved") {
		t.Fatalf("after Approve: state %q\n%s", s, bodyText(b))
	}
	b.Screenshot(t, "approved")
	if s := e.status(id); s != "active" {
		t.Fatalf("API shows %s after approval in the browser", s)
	}

	// The same link again: already used, current state, no buttons.
	b.Do(chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS("#problem")))
	if s := state(b); s != "active" || present(b, "approve") || !strings.Contains(bodyText(b), "already used") {
		t.Fatalf("used link: state %q\n%s", s, bodyText(b))
	}
	b.Screenshot(t, "used")

	// Decline another request.
	id2, link2 := e.request("u-rec", "u-vp")
	b.Do(chromedp.Navigate(link2), chromedp.WaitVisible(chromedp.CSS("#decline")))
	b.Do(chromedp.Click(chromedp.CSS("#decline")), chromedp.WaitVisible(chromedp.CSS("#done")))
	if s := state(b); s != "declined" || present(b, "approve") || e.status(id2) != "declined" {
		t.Fatalf("after Decline: page %q, API %q", s, e.status(id2))
	}
	b.Screenshot(t, "declined")

	// Tampered and expired links: a clear page with one sentence.
	e.connect("u-other")
	_, link3 := e.request("u-other", "u-hm")
	u, _ := url.Parse(link3)
	q := u.Query()
	q.Set("t", q.Get("t")+"x")
	u.RawQuery = q.Encode()
	b.Do(chromedp.Navigate(u.String()), chromedp.WaitVisible(chromedp.CSS("#error")))
	if got := bodyText(b); !strings.Contains(got, "not valid") || !strings.Contains(got, "403") {
		t.Fatalf("tampered link page:\n%s", got)
	}
	b.Screenshot(t, "tampered")
	e.advance(8 * 24 * time.Hour)
	b.Do(chromedp.Navigate(link3), chromedp.WaitVisible(chromedp.CSS("#error")))
	if got := bodyText(b); !strings.Contains(got, "expired") || !strings.Contains(got, "410") {
		t.Fatalf("expired link page:\n%s", got)
	}
	b.Screenshot(t, "expired")
}
