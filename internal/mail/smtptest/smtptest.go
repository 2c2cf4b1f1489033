// Package smtptest is an SMTP server for tests: it listens on a loopback
// port, speaks enough of RFC 5321 for net/smtp (EHLO, STARTTLS, AUTH
// PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT), keeps every message it
// takes, and answers the end of DATA as the test tells it to.
package smtptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"math/big"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"
)

// Message is a message the server took.
type Message struct {
	From string
	To   []string
	Data string // the message as sent, CRLF line ends, dot-stuffing undone
	TLS  bool   // it came over TLS
	User string // the AUTH PLAIN user, if any
	Helo string // the name the client gave in EHLO or HELO
}

// Server is a running test server.
type Server struct {
	// Addr is the host:port it listens on.
	Addr string

	ln       net.Listener
	tls      *tls.Config
	roots    *x509.CertPool
	user     string
	password string

	mu    sync.Mutex
	msgs  []Message
	reply func(Message) (int, string)
	conns sync.WaitGroup
}

// Option configures a Server.
type Option func(*Server)

// WithSTARTTLS offers STARTTLS, with a certificate for 127.0.0.1 and
// localhost made at start; RootCAs trusts it.
func WithSTARTTLS() Option {
	return func(s *Server) { s.tls = &tls.Config{} }
}

// WithAuth requires AUTH PLAIN as user and password before MAIL.
func WithAuth(user, password string) Option {
	return func(s *Server) { s.user, s.password = user, password }
}

// New starts a server that t stops.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{}
	for _, o := range opts {
		o(s)
	}
	if s.tls != nil {
		cert, roots, err := certificate()
		if err != nil {
			t.Fatal(err)
		}
		s.tls.Certificates, s.roots = []tls.Certificate{cert}, roots
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.ln, s.Addr = ln, ln.Addr().String()
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.conns.Wait()
	})
	return s
}

// RootCAs trusts the server's certificate (WithSTARTTLS).
func (s *Server) RootCAs() *x509.CertPool { return s.roots }

// Reply sets how the end of each message's DATA is answered: fn returns
// the code and the text (250 takes the message, and only then is it
// kept). nil, the default, takes every message.
func (s *Server) Reply(fn func(Message) (code int, text string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reply = fn
}

// Messages returns the messages taken so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Wait waits up to timeout until n messages were taken, and returns them.
func (s *Server) Wait(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ms := s.Messages()
		if len(ms) >= n {
			return ms
		}
		if time.Now().After(deadline) {
			t.Fatalf("the SMTP server took %d messages in %v, want %d", len(ms), timeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Server) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			s.session(c)
		}()
	}
}

// session speaks SMTP on c until QUIT or an error.
func (s *Server) session(c net.Conn) {
	tp := textproto.NewConn(c)
	say := func(code int, text string) bool { return tp.PrintfLine("%d %s", code, text) == nil }
	if !say(220, "smtptest ready") {
		return
	}
	var m Message
	authed := s.user == ""
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			m.Helo = arg
			ext := []string{"250-smtptest", "250-8BITMIME"}
			if s.tls != nil && !m.TLS {
				ext = append(ext, "250-STARTTLS")
			}
			if s.user != "" {
				ext = append(ext, "250-AUTH PLAIN")
			}
			ext = append(ext, "250 HELP")
			for _, e := range ext {
				if tp.PrintfLine("%s", e) != nil {
					return
				}
			}
		case "HELO":
			m.Helo = arg
			say(250, "ok")
		case "NOOP":
			say(250, "ok")
		case "STARTTLS":
			if s.tls == nil || m.TLS {
				say(502, "no STARTTLS here")
				continue
			}
			if !say(220, "go ahead") {
				return
			}
			tc := tls.Server(c, s.tls)
			if tc.Handshake() != nil {
				return
			}
			c, tp = tc, textproto.NewConn(tc)
			m = Message{TLS: true, Helo: m.Helo}
		case "AUTH":
			mech, resp, _ := strings.Cut(arg, " ")
			b, err := base64.StdEncoding.DecodeString(resp)
			parts := strings.Split(string(b), "\x00")
			if !strings.EqualFold(mech, "PLAIN") || err != nil || len(parts) != 3 || parts[1] != s.user || parts[2] != s.password {
				say(535, "authentication failed")
				continue
			}
			authed, m.User = true, parts[1]
			say(235, "authenticated")
		case "MAIL":
			if !authed {
				say(530, "authentication required")
				continue
			}
			m.From, m.To = address(arg), nil
			say(250, "ok")
		case "RCPT":
			m.To = append(m.To, address(arg))
			say(250, "ok")
		case "DATA":
			if m.From == "" || len(m.To) == 0 {
				say(503, "MAIL and RCPT first")
				continue
			}
			if !say(354, "end with .") {
				return
			}
			var b strings.Builder
			for {
				l, err := tp.ReadLine()
				if err != nil {
					return
				}
				if l == "." {
					break
				}
				b.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
			}
			m.Data = b.String()
			s.mu.Lock()
			code, text := 250, "taken"
			if s.reply != nil {
				code, text = s.reply(m)
			}
			if code == 250 {
				s.msgs = append(s.msgs, m)
			}
			s.mu.Unlock()
			say(code, text)
			m = Message{TLS: m.TLS, User: m.User, Helo: m.Helo}
		case "RSET":
			m = Message{TLS: m.TLS, User: m.User, Helo: m.Helo}
			say(250, "ok")
		case "QUIT":
			say(221, "bye")
			return
		default:
			say(500, "unknown command")
		}
	}
}

// address reads the address of "FROM:<a@b> ..." or "TO:<a@b>".
func address(arg string) string {
	_, a, _ := strings.Cut(arg, ":")
	a, _, _ = strings.Cut(strings.TrimSpace(a), " ")
	return strings.Trim(a, "<>")
}

// certificate makes a self-signed certificate for 127.0.0.1 and localhost.
func certificate() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("making a certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, roots, nil
}
