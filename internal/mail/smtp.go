package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"os"
	"time"
)

// TLS modes of an SMTP connection.
const (
	// TLSOpportunistic upgrades with STARTTLS when the server offers it and
	// sends in the clear otherwise: what MTAs do between themselves.
	TLSOpportunistic = "opportunistic"
	// TLSStartTLS requires STARTTLS: a server that does not offer it is an
	// error, and nothing is sent.
	TLSStartTLS = "starttls"
	// TLSImplicit speaks TLS from the first byte (SMTPS, usually port 465).
	TLSImplicit = "tls"
	// TLSNone never uses TLS, even when offered: for a relay on localhost.
	TLSNone = "none"
)

// ErrRejected marks a permanent refusal of a message by the SMTP server: a
// 5xx reply to its recipient or to its content, which sending the same
// message again would meet again. A 5xx to the session (the greeting,
// EHLO, AUTH, MAIL FROM: a password rotated, a sender refused) is not one:
// it is this side's configuration, and every message would meet it, so it
// is retried like a server down rather than failing the whole queue.
var ErrRejected = errors.New("mail: rejected by the SMTP server")

// SMTP sends messages through one SMTP server (a relay or a submission
// service), one connection per message. The zero value is not usable; use
// NewSMTP.
type SMTP struct {
	addr      string
	host      string
	from      mail.Address
	username  string
	password  string
	mode      string
	timeout   time.Duration
	tlsConfig *tls.Config
	helo      string
}

// SMTPOpt configures an SMTP client.
type SMTPOpt func(*SMTP)

// WithAuth authenticates with PLAIN as username and password. net/smtp
// sends PLAIN credentials only over TLS or to localhost; elsewhere, in the
// clear, sending fails rather than leak them.
func WithAuth(username, password string) SMTPOpt {
	return func(s *SMTP) { s.username, s.password = username, password }
}

// WithTLS sets the TLS mode, one of TLSOpportunistic (the default),
// TLSStartTLS, TLSImplicit and TLSNone.
func WithTLS(mode string) SMTPOpt { return func(s *SMTP) { s.mode = mode } }

// WithTLSConfig sets the TLS configuration (its ServerName defaults to the
// server's host): for a private CA.
func WithTLSConfig(c *tls.Config) SMTPOpt { return func(s *SMTP) { s.tlsConfig = c } }

// WithSMTPTimeout bounds each message's whole conversation, connection
// included; default 30 s.
func WithSMTPTimeout(d time.Duration) SMTPOpt { return func(s *SMTP) { s.timeout = d } }

// WithHelo sets the name the client gives in EHLO; default the host's
// name (os.Hostname), which relays that refuse a name that is not a fully
// qualified domain want set.
func WithHelo(name string) SMTPOpt { return func(s *SMTP) { s.helo = name } }

// NewSMTP returns a client of the server at addr (host:port) sending as
// from (an address, with or without a display name: "Tally
// <billing@example.com>").
func NewSMTP(addr, from string, opts ...SMTPOpt) (*SMTP, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("mail: SMTP server %q: want host:port: %w", addr, err)
	}
	f, err := mail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("mail: sender address %q: %w", from, err)
	}
	s := &SMTP{addr: addr, host: host, from: *f, mode: TLSOpportunistic, timeout: 30 * time.Second}
	for _, o := range opts {
		o(s)
	}
	if s.helo == "" {
		if s.helo, err = os.Hostname(); err != nil || s.helo == "" {
			s.helo = "localhost"
		}
	}
	switch s.mode {
	case TLSOpportunistic, TLSStartTLS, TLSImplicit, TLSNone:
	default:
		return nil, fmt.Errorf("mail: TLS mode %q: want %s, %s, %s or %s", s.mode, TLSOpportunistic, TLSStartTLS, TLSImplicit, TLSNone)
	}
	if s.timeout <= 0 {
		return nil, errors.New("mail: the SMTP timeout must be positive")
	}
	if s.tlsConfig == nil {
		s.tlsConfig = &tls.Config{}
	}
	s.tlsConfig = s.tlsConfig.Clone()
	if s.tlsConfig.ServerName == "" {
		s.tlsConfig.ServerName = host
	}
	return s, nil
}

// From is the sender's address.
func (s *SMTP) From() mail.Address { return s.from }

// Send sends msg (a whole RFC 5322 message) to the recipient to. An error
// wrapping ErrRejected is the server's permanent refusal; any other is
// worth trying again later.
func (s *SMTP) Send(ctx context.Context, to string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	d := net.Dialer{}
	var conn net.Conn
	var err error
	if s.mode == TLSImplicit {
		conn, err = (&tls.Dialer{NetDialer: &d, Config: s.tlsConfig}).DialContext(ctx, "tcp", s.addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", s.addr)
	}
	if err != nil {
		return fmt.Errorf("connecting to the SMTP server %s: %w", s.addr, err)
	}
	// net/smtp knows no context: the deadline bounds the conversation, and
	// closing the connection when ctx ends cuts it short.
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c, err := smtp.NewClient(conn, s.host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("SMTP greeting: %w", err)
	}
	defer c.Close()
	return s.converse(c, to, msg)
}

func (s *SMTP) converse(c *smtp.Client, to string, msg []byte) error {
	if err := c.Hello(s.helo); err != nil {
		return fmt.Errorf("SMTP EHLO: %w", err)
	}
	if s.mode == TLSOpportunistic || s.mode == TLSStartTLS {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(s.tlsConfig); err != nil {
				return fmt.Errorf("SMTP STARTTLS: %w", err)
			}
		} else if s.mode == TLSStartTLS {
			return fmt.Errorf("the SMTP server %s does not offer STARTTLS, which the TLS mode %s requires", s.addr, TLSStartTLS)
		}
	}
	if s.username != "" {
		if err := c.Auth(smtp.PlainAuth("", s.username, s.password, s.host)); err != nil {
			return fmt.Errorf("SMTP AUTH: %w", err)
		}
	}
	if err := c.Mail(s.from.Address); err != nil {
		return fmt.Errorf("SMTP MAIL FROM: %w", err)
	}
	if err := c.Rcpt(to); err != nil {
		return classify("RCPT TO", err)
	}
	w, err := c.Data()
	if err != nil {
		return classify("DATA", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("SMTP sending the message: %w", err)
	}
	if err := w.Close(); err != nil {
		return classify("ending the message", err)
	}
	// The server took the message when it answered the end of DATA; a
	// failed QUIT does not make it untaken.
	_ = c.Quit()
	return nil
}

// classify wraps err, from a step about the message itself (its
// recipient, its content), with ErrRejected when it is a permanent (5xx)
// reply.
func classify(step string, err error) error {
	var te *textproto.Error
	if errors.As(err, &te) && te.Code >= 500 && te.Code < 600 {
		return fmt.Errorf("%w: %s: %w", ErrRejected, step, err)
	}
	return fmt.Errorf("SMTP %s: %w", step, err)
}
