// Package webhook sends Tally's events to the HTTP endpoints that subscribe
// to them, the way the Standard Webhooks specification (v1.0.0) describes:
// endpoints and their event-type filters (endpoints.go), the signature of
// every attempt (this file), the guard that keeps deliveries off internal
// networks (guard.go), and the worker that sends the deliveries the notify
// consumer group writes, with retries, throttling and a circuit breaker per
// endpoint (sender.go), and their log (deliveries.go).
package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SecretPrefix begins every endpoint secret: "whsec_" and the key in
// standard base64.
const SecretPrefix = "whsec_"

// Secret key sizes the specification allows, in bytes.
const (
	minSecretBytes = 24
	maxSecretBytes = 64
	newSecretBytes = 32
)

// ErrBadSecret is returned for a secret that is not "whsec_" followed by
// the standard base64 of 24 to 64 bytes.
var ErrBadSecret = errors.New("a secret is whsec_ and the base64 of 24 to 64 random bytes")

// NewSecret returns a fresh secret of 32 random bytes.
func NewSecret() string {
	b := make([]byte, newSecretBytes)
	rand.Read(b) // never fails (crypto/rand)
	return SecretPrefix + base64.StdEncoding.EncodeToString(b)
}

// secretKey returns the HMAC key of secret s.
func secretKey(s string) ([]byte, error) {
	enc, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return nil, ErrBadSecret
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil || len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return nil, ErrBadSecret
	}
	return key, nil
}

// CheckSecret returns ErrBadSecret if s is not a valid secret.
func CheckSecret(s string) error {
	_, err := secretKey(s)
	return err
}

// Sign returns the webhook-signature header of a message: for each secret,
// "v1," and the base64 HMAC-SHA256, keyed by the secret's decoded bytes, of
// "{id}.{timestamp}.{body}" (timestamp in Unix seconds), separated by
// spaces. A receiver accepts the message if any one of them matches, which
// is what lets an endpoint rotate its secret without downtime: during the
// rotation, both the new secret and the old one sign.
func Sign(id string, at time.Time, body []byte, secrets ...string) (string, error) {
	if len(secrets) == 0 {
		return "", errors.New("signing a webhook: no secret")
	}
	content := make([]byte, 0, len(id)+len(body)+12)
	content = append(content, id...)
	content = append(content, '.')
	content = strconv.AppendInt(content, at.Unix(), 10)
	content = append(content, '.')
	content = append(content, body...)
	sigs := make([]string, len(secrets))
	for i, s := range secrets {
		key, err := secretKey(s)
		if err != nil {
			return "", fmt.Errorf("signing a webhook: secret %d: %w", i+1, err)
		}
		mac := hmac.New(sha256.New, key)
		mac.Write(content)
		sigs[i] = "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	}
	return strings.Join(sigs, " "), nil
}
