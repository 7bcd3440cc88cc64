package daemon

// Logging: attributes carried by the context (the SMTP session id on every
// line written while deciding a message, the router's included).

import (
	"context"
	"log/slog"
)

type logAttrsKey struct{}

// WithLogAttrs returns a context whose log lines (written with the
// *Context methods of a logger built by NewLogger or wrapped by Run) carry
// attrs, e.g. the SMTP session id.
func WithLogAttrs(ctx context.Context, attrs ...slog.Attr) context.Context {
	if prev, ok := ctx.Value(logAttrsKey{}).([]slog.Attr); ok {
		attrs = append(append([]slog.Attr(nil), prev...), attrs...)
	}
	return context.WithValue(ctx, logAttrsKey{}, attrs)
}

// ctxHandler adds the attributes of WithLogAttrs to every record.
type ctxHandler struct{ slog.Handler }

func (h ctxHandler) Handle(ctx context.Context, r slog.Record) error {
	if attrs, ok := ctx.Value(logAttrsKey{}).([]slog.Attr); ok {
		r = r.Clone()
		r.AddAttrs(attrs...)
	}
	return h.Handler.Handle(ctx, r)
}

func (h ctxHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return ctxHandler{h.Handler.WithAttrs(attrs)}
}

func (h ctxHandler) WithGroup(name string) slog.Handler { return ctxHandler{h.Handler.WithGroup(name)} }

// withContextAttrs makes log honour WithLogAttrs (once).
func withContextAttrs(log *slog.Logger) *slog.Logger {
	if _, ok := log.Handler().(ctxHandler); ok {
		return log
	}
	return slog.New(ctxHandler{log.Handler()})
}
