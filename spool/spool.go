// Package spool holds the DATA of one inbound message while it is received
// and processed, without ever keeping a large message in memory.
//
// A Spool keeps up to its memory limit (DefaultMemLimit unless told otherwise)
// in a byte slice. The first Write that would go past the limit moves
// everything to a temporary file in the spool directory, created with mode
// 0600, and every later Write goes to that file through a small buffer. A
// 25 MiB message therefore costs the memory limit plus a 64 KiB write buffer,
// not 25 MiB.
//
// On Unix the temporary file is unlinked as soon as it is created: it lives
// only as long as its open descriptor, so a crash or kill -9 can never leave
// a message body behind on disk. (Where an open file cannot be unlinked, i.e.
// Windows, it is removed by Close instead.) Close releases the memory and the
// file; it is idempotent.
//
// A Spool is written by one goroutine and then read: Open returns an
// independent reader positioned at the start each time it is called, and any
// number of those readers may be used concurrently with each other (but not
// with Write).
package spool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
)

// DefaultMemLimit is the number of bytes a Spool keeps in memory before it
// spills to a file, when New is given a limit <= 0.
const DefaultMemLimit = 256 << 10

// fileBufSize is the write buffer in front of the spill file.
const fileBufSize = 64 << 10

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("spool: closed")

// Spool holds one message. The zero value is not usable; call New.
type Spool struct {
	dir      string
	memLimit int64

	mem  []byte        // contents while in memory
	f    *os.File      // spill file, once spilled
	w    *bufio.Writer // buffered writer in front of f
	name string        // f's path while it still has one (non-Unix)
	size int64
	err  error // sticky write error
	done bool  // closed
}

// initialMem is the first in-memory buffer's capacity.
const initialMem = 8 << 10

// New returns an empty Spool that spills to a temporary file in dir (the
// system temporary directory when dir is "") once it holds more than
// memLimit bytes (DefaultMemLimit when memLimit <= 0).
func New(dir string, memLimit int64) *Spool {
	if memLimit <= 0 {
		memLimit = DefaultMemLimit
	}
	if dir == "" {
		dir = os.TempDir()
	}
	return &Spool{dir: dir, memLimit: memLimit}
}

// Reuse gives s buf's memory (its capacity; the contents are ignored) as
// its first in-memory buffer, instead of a new one: a server receiving
// many small messages reuses one buffer per message in flight (Release).
// It does nothing once s has been written to.
func (s *Spool) Reuse(buf []byte) {
	if s.mem == nil && s.f == nil && !s.done && s.size == 0 {
		s.mem = buf[:0]
	}
}

// Release closes s and returns its in-memory buffer for another Spool's
// Reuse (nil if s spilled to a file or never held anything). No reader
// from Open may be used after it: the next message overwrites that
// memory.
func (s *Spool) Release() ([]byte, error) {
	mem := s.mem
	if s.f != nil || s.done {
		mem = nil
	}
	return mem, s.Close()
}

// Write appends p. After a failed Write the Spool is broken: every later
// Write returns the same error, and the caller should discard the message.
func (s *Spool) Write(p []byte) (int, error) {
	if s.done {
		return 0, ErrClosed
	}
	if s.err != nil {
		return 0, s.err
	}
	if s.f == nil {
		if int64(len(s.mem))+int64(len(p)) <= s.memLimit {
			if s.mem == nil {
				// Most mail is a few KiB: start there rather than
				// growing from zero (8.5% of the discard path's CPU).
				s.mem = make([]byte, 0, min(max(int64(len(p)), initialMem), s.memLimit))
			}
			s.mem = append(s.mem, p...)
			s.size += int64(len(p))
			return len(p), nil
		}
		if err := s.spill(); err != nil {
			s.err = err
			return 0, err
		}
	}
	n, err := s.w.Write(p)
	s.size += int64(n)
	if err != nil {
		s.err = fmt.Errorf("spool: write: %w", err)
		return n, s.err
	}
	return n, nil
}

// spill moves the in-memory contents to a new temporary file.
func (s *Spool) spill() error {
	f, err := os.CreateTemp(s.dir, "spool-*.eml") // mode 0600
	if err != nil {
		return fmt.Errorf("spool: create temporary file: %w", err)
	}
	if runtime.GOOS == "windows" {
		s.name = f.Name()
	} else if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return fmt.Errorf("spool: unlink temporary file: %w", err)
	}
	s.f = f
	s.w = bufio.NewWriterSize(f, fileBufSize)
	if _, err := s.w.Write(s.mem); err != nil {
		return fmt.Errorf("spool: write: %w", err)
	}
	s.mem = nil
	return nil
}

// Size is the number of bytes written so far.
func (s *Spool) Size() int64 { return s.size }

// Open returns a new reader over the whole contents, from the start. The
// reader sees what was written before Open was called. After a write error,
// or after Close, the reader returns that error.
func (s *Spool) Open() io.Reader {
	switch {
	case s.done:
		return errReader{ErrClosed}
	case s.err != nil:
		return errReader{s.err}
	case s.f == nil:
		return bytes.NewReader(s.mem)
	}
	if err := s.w.Flush(); err != nil {
		s.err = fmt.Errorf("spool: write: %w", err)
		return errReader{s.err}
	}
	return io.NewSectionReader(s.f, 0, s.size)
}

// Close releases the memory and removes the temporary file, if any. It is
// safe to call more than once.
func (s *Spool) Close() error {
	if s.done {
		return nil
	}
	s.done = true
	s.mem = nil
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	if s.name != "" {
		if rerr := os.Remove(s.name); rerr != nil && err == nil {
			err = rerr
		}
	}
	s.f, s.w = nil, nil
	return err
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
