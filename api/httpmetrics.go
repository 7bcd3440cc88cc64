package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics measures the API by route pattern ("GET /v1/tenants/{t}",
// as registered) and status code. The pattern, never the raw path, is the
// label: tenant, user and candidate ids stay out of the series, and their
// number stays bounded by the routes.
type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// routeUnmatched labels requests no route took (404 from the catch-all,
// 405 from the router).
const routeUnmatched = "unmatched"

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_http_requests_total",
			Help: "HTTP API requests by route pattern (\"unmatched\": no route) and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "syncrelay_http_request_duration_seconds",
			Help:    "HTTP API request latency by route pattern, until the handler returns (a backup download included).",
			Buckets: prometheus.DefBuckets, // 5 ms .. 10 s
		}, []string{"route"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency)
	}
	return m
}

// serve runs h and records the request under the pattern the mux chose.
func (m *httpMetrics) serve(h http.Handler, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	h.ServeHTTP(sw, r)
	// ServeMux sets r.Pattern on the request it was given.
	route := r.Pattern
	if route == "" || route == "/" {
		route = routeUnmatched
	}
	code := sw.code
	if code == 0 {
		code = http.StatusOK // nothing written: net/http answers 200
	}
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Flush keeps streaming responses streaming.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
