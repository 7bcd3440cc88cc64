package api

import (
	_ "embed"
	"net/http"
)

// openAPIDoc is the OpenAPI 3.1 description of every route this server
// registers (and of the webhooks it sends). TestOpenAPIConsistency fails
// when a route is added without documenting it, or documented without
// being registered.
//
//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the embedded OpenAPI document.
func OpenAPI() []byte { return openAPIDoc }

func (s *Server) openAPIRoutes() {
	// Public, like /healthz: the document holds no tenant data and tools
	// fetch it without credentials.
	s.handle("GET /openapi.json", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(openAPIDoc)
	}))
}
