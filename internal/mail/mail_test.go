package mail_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	netmail "net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/internal/mail/smtptest"
	"github.com/tally-dev/tally/internal/testenv"
)

// queue queues m directly on pool.
func queue(t *testing.T, pool *pgxpool.Pool, m mail.Message) {
	t.Helper()
	var err error
	q := mail.QueueFunc(func(sql string, args ...any) {
		if err == nil {
			_, err = pool.Exec(context.Background(), sql, args...)
		}
	})
	if qerr := mail.Queue(q, m, time.Now()); qerr != nil {
		t.Fatal(qerr)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// sender runs a mail sender of pool through the server at addr until the
// test ends, with the schedule given (no jitter) and a fast poll.
func sender(t *testing.T, pool *pgxpool.Pool, addr string, reg prometheus.Registerer, schedule ...time.Duration) {
	t.Helper()
	c, err := mail.NewSMTP(addr, "Tally Billing <billing@example.com>", mail.WithSMTPTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := mail.LoadTemplates("")
	if err != nil {
		t.Fatal(err)
	}
	s, err := mail.NewSender(pool, c, tmpl, mail.WithSchedule(schedule...), mail.WithJitter(func(d time.Duration) time.Duration { return d }),
		mail.WithPollInterval(10*time.Millisecond), mail.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// state waits until message key reaches status, and returns its attempts
// and last error.
func state(t *testing.T, pool *pgxpool.Pool, key, status string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got string
		var attempts int
		var last *string
		err := pool.QueryRow(context.Background(), `SELECT status, attempts, last_error FROM mail_messages WHERE key = $1`, key).
			Scan(&got, &attempts, &last)
		if err != nil {
			t.Fatal(err)
		}
		if got == status {
			if last == nil {
				return attempts, ""
			}
			return attempts, *last
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s is %s after %d attempts (last error %v), want %s", key, got, attempts, last, status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// parts reads a message as sent: its header and its text and HTML bodies.
func parts(t *testing.T, data string) (netmail.Header, string, string) {
	t.Helper()
	m, err := netmail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("reading the message: %v\n%s", err, data)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		t.Fatalf("Content-Type %q (%v), want multipart/alternative", m.Header.Get("Content-Type"), err)
	}
	r := multipart.NewReader(m.Body, params["boundary"])
	var text, html string
	for {
		p, err := r.NextPart() // decodes quoted-printable
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		switch ct := p.Header.Get("Content-Type"); ct {
		case "text/plain; charset=utf-8":
			text = string(b)
		case "text/html; charset=utf-8":
			html = string(b)
		default:
			t.Fatalf("a part of type %q", ct)
		}
	}
	if text == "" || html == "" {
		t.Fatalf("text %q, HTML %q: want both", text, html)
	}
	return m.Header, text, html
}

func TestMessageIsMultipartWithSafeHeaders(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	srv := smtptest.New(t)
	// A name made to break out of the Subject and To headers and the HTML.
	name := "Zoë <b>Bold</b>\r\nBcc: evil@example.net"
	queue(t, pool, mail.Message{Key: "welcome:c1", Kind: mail.KindWelcome, EventID: uuid.New(),
		To: mail.Address{Name: name, Email: "zoe@example.com"}, CustomerID: "c1"})
	sender(t, pool, srv.Addr, nil, time.Millisecond)
	ms := srv.Wait(t, 1, 20*time.Second)
	if attempts, _ := state(t, pool, "welcome:c1", mail.StateSent); attempts != 1 {
		t.Errorf("sent after %d attempts, want 1", attempts)
	}
	m := ms[0]
	if m.From != "billing@example.com" || len(m.To) != 1 || m.To[0] != "zoe@example.com" {
		t.Errorf("envelope from %q to %v", m.From, m.To)
	}
	h, text, html := parts(t, m.Data)
	if h.Get("Bcc") != "" || strings.Contains(strings.SplitN(m.Data, "\r\n\r\n", 2)[0], "\r\nBcc:") {
		t.Errorf("the name started a header of its own:\n%s", m.Data)
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Address != "zoe@example.com" || !strings.HasPrefix(to[0].Name, "Zoë <b>Bold</b>") {
		t.Errorf("To %v (%v)", to, err)
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(h.Get("Subject"))
	if err != nil || subject != "Welcome, Zoë <b>Bold</b> Bcc: evil@example.net" {
		t.Errorf("Subject %q (%v)", subject, err)
	}
	if from, err := h.AddressList("From"); err != nil || from[0].Name != "Tally Billing" {
		t.Errorf("From %v (%v)", from, err)
	}
	if id := h.Get("Message-ID"); !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@example.com>") {
		t.Errorf("Message-ID %q", id)
	}
	if !strings.Contains(text, "Hello Zoë <b>Bold</b>") || !strings.Contains(text, "(zoe@example.com)") {
		t.Errorf("text:\n%s", text)
	}
	if strings.Contains(html, "<b>Bold") || !strings.Contains(html, "Zoë &lt;b&gt;Bold&lt;/b&gt;") {
		t.Errorf("the HTML does not escape the name:\n%s", html)
	}
}

func TestTransientFailuresAreRetriedAndPermanentOnesAreNot(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	srv := smtptest.New(t)
	tries := map[string]int{}
	srv.Reply(func(m smtptest.Message) (int, string) {
		switch {
		case m.To[0] == "busy@example.com":
			if tries[m.To[0]]++; tries[m.To[0]] <= 2 {
				return 451, "try again later"
			}
		case m.To[0] == "nobody@example.com":
			return 550, "no such mailbox"
		}
		return 250, "taken"
	})
	reg := prometheus.NewRegistry()
	sender(t, pool, srv.Addr, reg, 10*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond)
	queue(t, pool, mail.Message{Key: "welcome:busy", Kind: mail.KindWelcome, EventID: uuid.New(), To: mail.Address{Name: "B", Email: "busy@example.com"}})
	queue(t, pool, mail.Message{Key: "welcome:nobody", Kind: mail.KindWelcome, EventID: uuid.New(), To: mail.Address{Name: "N", Email: "nobody@example.com"}})
	queue(t, pool, mail.Message{Key: "welcome:bad", Kind: mail.KindWelcome, EventID: uuid.New(), To: mail.Address{Name: "X", Email: "not an address"}})

	if attempts, _ := state(t, pool, "welcome:busy", mail.StateSent); attempts != 3 {
		t.Errorf("busy: sent after %d attempts, want 3 (two 451s)", attempts)
	}
	if attempts, last := state(t, pool, "welcome:nobody", mail.StateFailed); attempts != 1 || !strings.Contains(last, "550") || !strings.Contains(last, "no such mailbox") {
		t.Errorf("nobody: failed after %d attempts (%q), want 1, the 550", attempts, last)
	}
	if attempts, last := state(t, pool, "welcome:bad", mail.StateFailed); attempts != 1 || !strings.Contains(last, "not an address") {
		t.Errorf("bad: failed after %d attempts (%q), want 1", attempts, last)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("the server took %d messages, want 1", n)
	}
	for outcome, want := range map[string]float64{"sent": 1, "deferred": 2, "failed": 2} {
		if got := counter(t, reg, outcome); got != want {
			t.Errorf("tally_mail_messages_total{kind=welcome,outcome=%s} is %v, want %v", outcome, got, want)
		}
	}
}

// counter reads tally_mail_messages_total{kind="welcome",outcome} in reg,
// 0 when it has no such series.
func counter(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tally_mail_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == "welcome" && labels["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestServerDownFailsAfterTheSchedule(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there: connections are refused
	sender(t, pool, addr, nil, 10*time.Millisecond, 10*time.Millisecond)
	queue(t, pool, mail.Message{Key: "welcome:c1", Kind: mail.KindWelcome, EventID: uuid.New(), To: mail.Address{Email: "a@example.com"}})
	attempts, last := state(t, pool, "welcome:c1", mail.StateFailed)
	if attempts != 3 || !strings.Contains(last, "connecting to the SMTP server") {
		t.Errorf("failed after %d attempts (%q), want 3 (the schedule's two delays and the first)", attempts, last)
	}
}

func TestCustomerAddressIsTheContactsAtSendingTime(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	srv := smtptest.New(t)
	save := func(name, email string, seq int64) {
		t.Helper()
		var err error
		mail.SaveContact(mail.QueueFunc(func(sql string, args ...any) { _, err = pool.Exec(context.Background(), sql, args...) }), "c1", name, email, seq)
		if err != nil {
			t.Fatal(err)
		}
	}
	queue(t, pool, mail.Message{Key: "receipt:p1", Kind: mail.KindReceipt, EventID: uuid.New(), CustomerID: "c1", Data: mail.Samples[mail.KindReceipt]})
	queue(t, pool, mail.Message{Key: "receipt:p1", Kind: mail.KindReceipt, EventID: uuid.New(), CustomerID: "c1", Data: mail.Samples[mail.KindReceipt]})
	sender(t, pool, srv.Addr, nil, 20*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond,
		time.Second, time.Second, time.Second, time.Second)
	_, last := state(t, pool, "receipt:p1", mail.StatePending)
	for deadline := time.Now().Add(20 * time.Second); last == "" && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		_, last = state(t, pool, "receipt:p1", mail.StatePending)
	}
	if !strings.Contains(last, "no address is known for customer c1 yet") {
		t.Errorf("last error %q", last)
	}
	// The customer's update arrives before its creation: the later version
	// stays.
	save("Ada L.", "ada@new.example.com", 2)
	save("Ada", "ada@example.com", 1)
	state(t, pool, "receipt:p1", mail.StateSent)
	ms := srv.Messages()
	if len(ms) != 1 || ms[0].To[0] != "ada@new.example.com" {
		t.Fatalf("messages %+v, want one to ada@new.example.com", ms)
	}
	_, text, _ := parts(t, ms[0].Data)
	if !strings.Contains(text, "Hello Ada L.,") {
		t.Errorf("text:\n%s", text)
	}
}

func TestCancelledNoticesAreNotSent(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	srv := smtptest.New(t)
	for _, key := range []string{"reminder:i1:-3", "overdue:i1:1"} {
		kind, _, _ := strings.Cut(key, ":")
		queue(t, pool, mail.Message{Key: key, Kind: kind, EventID: uuid.New(), To: mail.Address{Email: "a@example.com"},
			InvoiceID: "i1", Data: mail.Samples[kind]})
	}
	queue(t, pool, mail.Message{Key: "receipt:p1", Kind: mail.KindReceipt, EventID: uuid.New(), To: mail.Address{Email: "a@example.com"},
		InvoiceID: "i1", Data: mail.Samples[mail.KindReceipt]})
	var err error
	mail.SettleInvoice(mail.QueueFunc(func(sql string, args ...any) { _, err = pool.Exec(context.Background(), sql, args...) }),
		"i1", "the invoice was paid")
	if err != nil {
		t.Fatal(err)
	}
	sender(t, pool, srv.Addr, nil, time.Millisecond)
	state(t, pool, "receipt:p1", mail.StateSent)
	for _, key := range []string{"reminder:i1:-3", "overdue:i1:1"} {
		if _, last := state(t, pool, key, mail.StateCancelled); last != "the invoice was paid" {
			t.Errorf("%s: reason %q", key, last)
		}
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("the server took %d messages, want the receipt alone", n)
	}
}

func TestSTARTTLSAndAuth(t *testing.T) {
	t.Parallel()
	srv := smtptest.New(t, smtptest.WithSTARTTLS(), smtptest.WithAuth("tally", "s3cret"))
	ctx := context.Background()
	msg := []byte("Subject: x\r\n\r\nhello\r\n")
	c, err := mail.NewSMTP(srv.Addr, "t@example.com", mail.WithTLS(mail.TLSStartTLS), mail.WithAuth("tally", "s3cret"),
		mail.WithTLSConfig(tlsConfig(srv)), mail.WithHelo("mail.tally.example"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctx, "a@example.com", msg); err != nil {
		t.Fatal(err)
	}
	if ms := srv.Messages(); len(ms) != 1 || !ms[0].TLS || ms[0].User != "tally" || ms[0].Helo != "mail.tally.example" {
		t.Errorf("messages %+v, want one over TLS by tally, greeting as mail.tally.example", ms)
	}

	wrong, err := mail.NewSMTP(srv.Addr, "t@example.com", mail.WithAuth("tally", "guess"), mail.WithTLSConfig(tlsConfig(srv)))
	if err != nil {
		t.Fatal(err)
	}
	// A refused session is this side's configuration, which every message
	// would meet: retried, not a rejection of the message.
	if err := wrong.Send(ctx, "a@example.com", msg); err == nil || errors.Is(err, mail.ErrRejected) || !strings.Contains(err.Error(), "535") {
		t.Errorf("a wrong password: %v, want the 535, not as a rejection of the message", err)
	}

	plain := smtptest.New(t)
	required, err := mail.NewSMTP(plain.Addr, "t@example.com", mail.WithTLS(mail.TLSStartTLS))
	if err != nil {
		t.Fatal(err)
	}
	if err := required.Send(ctx, "a@example.com", msg); err == nil || errors.Is(err, mail.ErrRejected) || !strings.Contains(err.Error(), "does not offer STARTTLS") {
		t.Errorf("STARTTLS required of a server without it: %v", err)
	}
	if n := len(plain.Messages()); n != 0 {
		t.Errorf("the server without STARTTLS took %d messages", n)
	}
	// Without WithHelo, the client greets with the host's name.
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	byDefault, err := mail.NewSMTP(plain.Addr, "t@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if err := byDefault.Send(ctx, "a@example.com", msg); err != nil {
		t.Fatal(err)
	}
	if ms := plain.Messages(); len(ms) != 1 || ms[0].Helo != host {
		t.Errorf("messages %+v, want one greeting as %q", ms, host)
	}
}

func TestSilentServerTimesOut(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never greeted
		}
	}()
	c, err := mail.NewSMTP(ln.Addr().String(), "t@example.com", mail.WithSMTPTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Send(context.Background(), "a@example.com", []byte("x\r\n"))
	if err == nil || errors.Is(err, mail.ErrRejected) {
		t.Fatalf("a server that never answers: %v, want an error worth retrying", err)
	}
}

func TestBadSettingsAreRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr, from string
		opts       []mail.SMTPOpt
		want       string
	}{
		{"smtp.example.com", "t@example.com", nil, "want host:port"},
		{"smtp.example.com:25", "not an address", nil, "sender address"},
		{"smtp.example.com:25", "t@example.com", []mail.SMTPOpt{mail.WithTLS("ssl")}, `TLS mode "ssl"`},
		{"smtp.example.com:25", "t@example.com", []mail.SMTPOpt{mail.WithSMTPTimeout(0)}, "timeout must be positive"},
	} {
		if _, err := mail.NewSMTP(tc.addr, tc.from, tc.opts...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewSMTP(%q, %q): %v, want %q", tc.addr, tc.from, err, tc.want)
		}
	}
}

func TestTemplates(t *testing.T) {
	t.Parallel()
	tmpl, err := mail.LoadTemplates("")
	if err != nil {
		t.Fatal(err)
	}
	to := mail.Address{Name: "Ada", Email: "ada@example.com"}
	receipt := func(data map[string]any) (string, string, string) {
		t.Helper()
		s, text, html, err := tmpl.Render(mail.KindReceipt, mail.View{To: to, From: "Tally", Data: data})
		if err != nil {
			t.Fatal(err)
		}
		return s, text, html
	}
	s, text, html := receipt(mail.Samples[mail.KindReceipt])
	if s != "Payment received for invoice inv_1" || !strings.Contains(text, "60.00 EUR remains due") ||
		!strings.Contains(text, "40.00 EUR of 100.00 EUR is paid") || strings.Contains(text, "paid in full") ||
		!strings.Contains(html, "60.00 EUR remains due") {
		t.Errorf("a partial payment's receipt: %q\n%s\n%s", s, text, html)
	}
	full := map[string]any{}
	for k, v := range mail.Samples[mail.KindReceipt] {
		full[k] = v
	}
	full["amount"], full["amount_paid"], full["amount_due"], full["paid_in_full"] = "60.00", "100.00", "0.00", true
	s, text, html = receipt(full)
	if s != "Invoice inv_1 is paid in full" || !strings.Contains(text, "now paid in full (100.00 EUR)") ||
		strings.Contains(text, "remains due") || !strings.Contains(html, "paid in full") {
		t.Errorf("a settling payment's receipt: %q\n%s\n%s", s, text, html)
	}
	for kind, want := range map[string]string{mail.KindReminder: "Invoice inv_1 is due on 2025-03-31",
		mail.KindOverdue: "Invoice inv_1 is 7 day(s) overdue", mail.KindEndpointDisabled: "Webhook endpoint we_1 was disabled",
		mail.KindWelcome: "Welcome, Ada"} {
		if s, _, _, err := tmpl.Render(kind, mail.View{To: to, From: "Tally", Data: mail.Samples[kind]}); err != nil || s != want {
			t.Errorf("%s: subject %q (%v), want %q", kind, s, err, want)
		}
	}
	due := map[string]any{}
	for k, v := range mail.Samples[mail.KindReminder] {
		due[k] = v
	}
	due["days_to_due"] = 0
	if s, text, _, err := tmpl.Render(mail.KindReminder, mail.View{To: to, From: "Tally", Data: due}); err != nil ||
		s != "Invoice inv_1 is due today" || !strings.Contains(text, "is due today") {
		t.Errorf("a reminder on the due date: %q (%v)\n%s", s, err, text)
	}
	if _, _, _, err := tmpl.Render(mail.KindReceipt, mail.View{To: to, Data: map[string]any{}}); err == nil {
		t.Error("a receipt without its data rendered")
	}

	// An operator's directory replaces the templates it has.
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("welcome.txt", `{{define "subject"}}Hi {{.To.Name}}{{end}}Custom text for {{.To.Email}}`)
	write("welcome.html", `<p>Custom HTML for {{.To.Name}}</p>`)
	custom, err := mail.LoadTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s, text, html, err := custom.Render(mail.KindWelcome, mail.View{To: to, Data: map[string]any{}}); err != nil ||
		s != "Hi Ada" || text != "Custom text for ada@example.com" || html != "<p>Custom HTML for Ada</p>" {
		t.Errorf("custom welcome: %q %q %q (%v)", s, text, html, err)
	}
	if s, _, _, err := custom.Render(mail.KindOverdue, mail.View{To: to, Data: mail.Samples[mail.KindOverdue]}); err != nil || s != "Invoice inv_1 is 7 day(s) overdue" {
		t.Errorf("the built-in overdue beside a custom welcome: %q (%v)", s, err)
	}

	for name, body := range map[string]string{
		"receipt.txt":  `{{define "subject"}}x{{end}}{{.Data.no_such_field}}`,
		"overdue.txt":  `no subject here`,
		"reminder.txt": `{{define "subject"}}x{{end}}{{if}}`,
	} {
		bad := t.TempDir()
		if err := os.WriteFile(filepath.Join(bad, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := mail.LoadTemplates(bad); err == nil || !strings.Contains(err.Error(), filepath.Join(bad, name)) {
			t.Errorf("a bad %s: %v, want an error naming the file", name, err)
		}
	}
	if _, err := mail.LoadTemplates(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing template directory was taken")
	}
}

// tlsConfig trusts srv's certificate.
func tlsConfig(srv *smtptest.Server) *tls.Config { return &tls.Config{RootCAs: srv.RootCAs()} }

// BenchmarkSend measures sending through a loopback SMTP server: claim,
// render, compose, one SMTP conversation each, record.
func BenchmarkSend(b *testing.B) {
	pool, _ := testenv.Pool(b)
	srv := smtptest.New(b)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO mail_contacts VALUES ('c1', 'Ada', 'ada@example.com', 1)`); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO mail_messages (key, kind, event_id, customer_id, data, created_at, next_attempt_at)
		SELECT 'receipt:' || i, 'receipt', gen_random_uuid(), 'c1', $2::jsonb, now(), now() FROM generate_series(1, $1) i`,
		b.N, `{"invoice_id": "inv_1", "payment_id": "pay_1", "currency": "EUR", "amount": "40.00", "paid_at": "2025-03-10",
		"total": "100.00", "amount_paid": "40.00", "amount_due": "60.00", "paid_in_full": false}`); err != nil {
		b.Fatal(err)
	}
	c, err := mail.NewSMTP(srv.Addr, "Tally <billing@example.com>")
	if err != nil {
		b.Fatal(err)
	}
	tmpl, err := mail.LoadTemplates("")
	if err != nil {
		b.Fatal(err)
	}
	s, err := mail.NewSender(pool, c, tmpl, mail.WithPollInterval(5*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(sctx) }()
	srv.Wait(b, b.N, 10*time.Minute)
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
