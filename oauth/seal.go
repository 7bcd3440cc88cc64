package oauth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// sealVersion prefixes every sealed blob so the format can change later.
const sealVersion = 0x01

// sealer encrypts grant tokens with AES-256-GCM: a fresh random 96-bit
// nonce per write and the record id as associated data, so a blob moved to
// another record (or tampered with) does not open.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("oauth: grant key must be 32 bytes (AES-256), got %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal returns version || nonce || ciphertext+tag.
func (s *sealer) seal(plain []byte, recordID string) ([]byte, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("oauth: nonce: %w", err)
	}
	return s.aead.Seal(out, out[1:1+ns], plain, []byte(recordID)), nil
}

var errUnseal = errors.New("oauth: stored grant does not decrypt (wrong secret key or tampered record)")

func (s *sealer) open(blob []byte, recordID string) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(blob) < 1+ns+s.aead.Overhead() || blob[0] != sealVersion {
		return nil, errUnseal
	}
	plain, err := s.aead.Open(nil, blob[1:1+ns], blob[1+ns:], []byte(recordID))
	if err != nil {
		return nil, errUnseal
	}
	return plain, nil
}
