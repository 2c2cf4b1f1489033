package mail

import (
	"errors"
	"io"
	"mime"
	"mime/multipart"
	netmail "net/mail"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzCompose checks that no name, subject or body, however made, adds a
// header, loses the recipient or changes the bodies.
func FuzzCompose(f *testing.F) {
	f.Add("Ada Lovelace", "Welcome, Ada", "Hello\nAda", "<p>Hello</p>")
	f.Add("Zoë \"Z\" <z@evil>\r\nBcc: x@evil", "Hi\r\nBcc: x@evil", "line\r\n.\r\nQUIT", "=?utf-8?q?x?=")
	f.Add("", "", "", "")
	f.Add(strings.Repeat("😀", 200), strings.Repeat("é", 300), "x", "y")
	f.Fuzz(func(t *testing.T, name, subject, text, html string) {
		from := netmail.Address{Name: "Tally", Address: "billing@example.com"}
		to := netmail.Address{Name: name, Address: "ada@example.com"}
		msg, err := compose(from, to, subject, text, html, "<id@example.com>", time.Unix(1614265330, 0).UTC())
		if err != nil {
			t.Fatal(err)
		}
		head, _, _ := strings.Cut(string(msg), "\r\n\r\n")
		for _, line := range strings.Split(head, "\r\n") {
			if len(line) > 998 {
				t.Fatalf("a header line of %d octets, more than RFC 5322's 998: %.80q…", len(line), line)
			}
		}
		m, err := netmail.ReadMessage(strings.NewReader(string(msg)))
		if err != nil {
			t.Fatalf("the message does not parse: %v\n%q", err, msg)
		}
		var keys []string
		for k := range m.Header {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := []string{"Content-Type", "Date", "From", "Message-Id", "Mime-Version", "Subject", "To"}; !slices.Equal(keys, want) {
			t.Fatalf("headers %v, want %v\n%q", keys, want, msg)
		}
		if utf8.ValidString(name) {
			if as, err := m.Header.AddressList("To"); err != nil || len(as) != 1 || as[0].Address != "ada@example.com" {
				t.Fatalf("To %q: %v (%v)", m.Header.Get("To"), as, err)
			}
		}
		if utf8.ValidString(subject) {
			want := strings.Join(strings.Fields(subject), " ")
			if s, err := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject")); err != nil || s != want {
				t.Fatalf("Subject %q decodes to %q (%v), want %q", m.Header.Get("Subject"), s, err, want)
			}
		}
		_, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
		if err != nil {
			t.Fatal(err)
		}
		r := multipart.NewReader(m.Body, params["boundary"])
		for _, want := range []string{text, html} {
			p, err := r.NextPart()
			if err != nil {
				t.Fatalf("a part: %v\n%q", err, msg)
			}
			b, err := io.ReadAll(p)
			if err != nil {
				t.Fatal(err)
			}
			if want := lineBreaks.Replace(want); string(b) != want {
				t.Fatalf("a body reads back %q, want %q", b, want)
			}
		}
		if _, err := r.NextPart(); !errors.Is(err, io.EOF) {
			t.Fatalf("a third part: %v", err)
		}
	})
}
