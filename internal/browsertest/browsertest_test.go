package browsertest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"

	"github.com/chromedp/chromedp"
)

// The browser loads a real page over loopback HTTP, runs its script, and a
// screenshot is a PNG on disk.
func TestBrowserLoadsPage(t *testing.T) {
	b := New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><title>bt</title><p id=x>before</p><script>document.getElementById("x").textContent="after"</script>`)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	b.Do(chromedp.Navigate("http://" + ln.Addr().String() + "/"))
	text := Get(b, chromedp.Text(chromedp.CSS("#x")))
	title := Get(b, chromedp.Title())
	if text != "after" || title != "bt" {
		t.Fatalf("text %q title %q", text, title)
	}
	t.Setenv(OutputEnv, t.TempDir())
	path := b.Screenshot(t, "page")
	png, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("%s is not a PNG", path)
	}
}
