package bolt

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestHasData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name string
		fill func(t *testing.T, s *Store)
		want bool
	}{
		{"empty", func(*testing.T, *Store) {}, false},
		{"tenant", seed, true},
		{"thread and message", func(t *testing.T, s *Store) { seed(t, s); newThread(t, s) }, true},
		{"key fingerprint only", func(t *testing.T, s *Store) {
			if err := s.SetKeyFingerprint(ctx, "f00d"); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t)
			tt.fill(t, s)
			got, err := s.HasData(ctx)
			if err != nil || got != tt.want {
				t.Fatalf("HasData = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestKeyFingerprint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, dir := openTest(t)
	if fp, ok, err := s.KeyFingerprint(ctx); err != nil || ok || fp != "" {
		t.Fatalf("fresh store: KeyFingerprint = %q, %v, %v", fp, ok, err)
	}
	if err := s.SetKeyFingerprint(ctx, "abc123"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyFingerprint(ctx, "abc123"); err != nil {
		t.Fatalf("setting the same fingerprint again: %v", err)
	}
	// A different key never replaces the recorded one.
	if err := s.SetKeyFingerprint(ctx, "other"); !errors.Is(err, ErrExists) {
		t.Fatalf("replacing the fingerprint: %v, want ErrExists", err)
	}
	if fp, ok, err := s.KeyFingerprint(ctx); err != nil || !ok || fp != "abc123" {
		t.Fatalf("KeyFingerprint = %q, %v, %v", fp, ok, err)
	}
	// It survives a reopen and is readable read-only (check, restore).
	s.Close()
	ro, err := Open(dir, Options{ReadOnly: true, LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if fp, ok, err := ro.KeyFingerprint(ctx); err != nil || !ok || fp != "abc123" {
		t.Fatalf("read-only KeyFingerprint = %q, %v, %v", fp, ok, err)
	}
	if has, err := ro.HasData(ctx); err != nil || !has {
		t.Fatalf("read-only HasData = %v, %v", has, err)
	}
}
