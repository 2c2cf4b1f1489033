package mail

import (
	"bytes"
	"fmt"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"time"
)

// lineBreaks makes every line break (CRLF, a lone LF or a lone CR) the
// CRLF that SMTP wants; quoted-printable keeps them as they are.
var lineBreaks = strings.NewReplacer("\r\n", "\r\n", "\r", "\r\n", "\n", "\r\n")

// compose builds an RFC 5322 message, multipart/alternative with the plain
// text first and the HTML last (the one a client prefers when it can).
// Header values come from customer data: addresses are encoded by
// net/mail, the subject as an RFC 2047 word when it is not plain ASCII
// (after its runs of white space, line breaks included, become one space),
// so no value can end its header and start another.
func compose(from, to mail.Address, subject, text, html, messageID string, date time.Time) ([]byte, error) {
	var b bytes.Buffer
	// An encoded header is a run of encoded-words, each at most 75 bytes;
	// folding between them keeps every line far under RFC 5322's 998
	// octets, whatever the length of a name or a subject.
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, strings.ReplaceAll(v, "?= =?", "?=\r\n =?")) }
	h("From", from.String())
	h("To", to.String())
	// The subject is made one line of single spaces, whatever the data:
	// what a reader sees of a folded header, and no CR or LF to encode.
	h("Subject", mime.QEncoding.Encode("utf-8", strings.Join(strings.Fields(subject), " ")))
	h("Date", date.Format(time.RFC1123Z))
	h("Message-ID", messageID)
	h("MIME-Version", "1.0")
	mw := multipart.NewWriter(&b)
	h("Content-Type", `multipart/alternative; boundary="`+mw.Boundary()+`"`)
	b.WriteString("\r\n")
	for _, part := range []struct{ typ, body string }{{"text/plain", text}, {"text/html", html}} {
		w, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {part.typ + "; charset=utf-8"},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		if err != nil {
			return nil, fmt.Errorf("composing the message: %w", err)
		}
		qw := quotedprintable.NewWriter(w)
		if _, err := qw.Write([]byte(lineBreaks.Replace(part.body))); err != nil {
			return nil, fmt.Errorf("composing the message: %w", err)
		}
		if err := qw.Close(); err != nil {
			return nil, fmt.Errorf("composing the message: %w", err)
		}
	}
	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("composing the message: %w", err)
	}
	return b.Bytes(), nil
}
