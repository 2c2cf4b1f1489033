package notify_test

import (
	"context"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	netmail "net/mail"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/consumers/notify"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/internal/mail/smtptest"
	"github.com/tally-dev/tally/internal/testenv"
)

// invoice is a valid invoice payload of customer c1, due 2025-03-31, with
// paid of its 1000 cents paid and the notice, if any.
func invoice(id, status string, paid int64, notice obj) obj {
	o := obj{"id": id, "customer_id": "c1", "currency": "EUR", "status": status, "issued_at": "2025-03-01",
		"due_at": "2025-03-31", "lines": []obj{{"description": "Consulting", "amount": 1000, "quantity": 1, "total": 1000}},
		"subtotal": 1000, "discount": 0, "tax": 0, "total": 1000, "amount_paid": paid, "amount_due": 1000 - paid,
		"created_at": stamp, "updated_at": stamp}
	if notice != nil {
		o["notice"] = notice
	}
	return o
}

// paid adds to an invoice paid in full the day it was.
func paid(o obj) obj {
	o["paid_at"] = "2025-04-02"
	return o
}

// consume runs the notify group, with email, until it applied n records.
func consume(t *testing.T, pool *pgxpool.Pool, seeds []string, n int) {
	t.Helper()
	c, err := consumer.New(pool, notify.Group(notify.WithMail()), consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)),
		consumer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	applied(t, pool, n)
	cancel()
	<-done
}

// sendMail runs a mail sender through srv until every message is settled.
func sendMail(t *testing.T, pool *pgxpool.Pool, srv *smtptest.Server) {
	t.Helper()
	c, err := mail.NewSMTP(srv.Addr, "Acme Billing <billing@acme.example>")
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := mail.LoadTemplates("")
	if err != nil {
		t.Fatal(err)
	}
	s, err := mail.NewSender(pool, c, tmpl, mail.WithPollInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var pending int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM mail_messages WHERE status = 'pending'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still pending", pending)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// text is the subject and plain-text body of a message the server took.
func text(t *testing.T, m smtptest.Message) (string, string) {
	t.Helper()
	msg, err := netmail.ReadMessage(strings.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := multipart.NewReader(msg.Body, params["boundary"]).NextPart()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(p)
	if err != nil {
		t.Fatal(err)
	}
	return subject, string(b)
}

func TestEmailFollowsEvents(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	srv := smtptest.New(t)
	ctx := context.Background()
	customer := func(seq int64, typ, name, email string) *kgo.Record {
		return eventAt(t, typ, "c1", seq, obj{"id": "c1", "name": name, "email": email, "created_at": stamp, "updated_at": stamp})
	}
	payment := func(id string, amount, paid int64) *kgo.Record {
		return event(t, "tally.invoice.payment_received.v1", "i1", obj{"invoice_id": "i1", "customer_id": "c1", "payment_id": id,
			"currency": "EUR", "amount": amount, "paid_at": "2025-03-10", "total": 1000, "amount_paid": paid, "amount_due": 1000 - paid})
	}
	reminder := event(t, "tally.invoice.reminder_sent.v1", "i2", invoice("i2", "open", 0, obj{"kind": "reminder", "step": -3,
		"days_past_due": -3, "sent_on": "2025-03-28", "skipped_steps": []int{}}))
	first := []*kgo.Record{
		customer(1, "tally.customer.created.v1", "Ada", "ada@example.com"),
		// A customer a CSV import made: no welcome.
		eventAt(t, "tally.customer.created.v1", "c2", 1, obj{"id": "c2", "name": "Bob", "email": "bob@example.com",
			"external_id": "crm-42", "created_at": stamp, "updated_at": stamp}),
		customer(2, "tally.customer.updated.v1", "Ada Lovelace", "ada@lovelace.example"),
		payment("p1", 400, 400),
		payment("p2", 600, 1000),
		reminder,
		// A past-due notice, then the invoice's payment before any email
		// goes out: the notice is cancelled.
		event(t, "tally.invoice.overdue.v1", "i3", invoice("i3", "open", 0, obj{"kind": "overdue", "step": 1,
			"days_past_due": 1, "sent_on": "2025-04-01", "skipped_steps": []int{}})),
		eventAt(t, "tally.invoice.paid.v1", "i3", 3, paid(invoice("i3", "paid", 1000, nil))),
		// A reminder applied after its invoice's payment (a retry, a
		// replay from the dead-letter queue): never queued.
		eventAt(t, "tally.invoice.paid.v1", "i4", 3, paid(invoice("i4", "paid", 1000, nil))),
		eventAt(t, "tally.invoice.reminder_sent.v1", "i4", 2, invoice("i4", "open", 0, obj{"kind": "reminder", "step": -3,
			"days_past_due": -3, "sent_on": "2025-03-28", "skipped_steps": []int{}})),
	}
	cl := testenv.Client(t, seeds)
	// Each record twice, as a relay that crashed after publishing sends it.
	if err := cl.ProduceSync(ctx, append(first, first...)...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	consume(t, pool, seeds, 2*len(first))
	sendMail(t, pool, srv)

	got := map[string]string{} // subject: text
	for _, m := range srv.Messages() {
		if len(m.To) != 1 || m.To[0] != "ada@lovelace.example" {
			t.Errorf("a message to %v, want the customer's latest address", m.To)
		}
		s, body := text(t, m)
		got[s] = body
	}
	want := map[string][]string{
		"Welcome, Ada Lovelace":           {"Hello Ada Lovelace,", "Your account with Acme Billing is ready"},
		"Payment received for invoice i1": {"payment of 4.00 EUR on 2025-03-10", "So far 4.00 EUR of 10.00 EUR is paid; 6.00 EUR remains due"},
		"Invoice i1 is paid in full":      {"payment of 6.00 EUR", "now paid in full (10.00 EUR)"},
		"Invoice i2 is due on 2025-03-31": {"is due on 2025-03-31, in 3 day(s)", "10.00 EUR remains to be paid"},
	}
	if len(got) != len(want) || len(srv.Messages()) != len(want) {
		t.Errorf("the server took %d messages, subjects %v; want one each of %d", len(srv.Messages()), keys(got), len(want))
	}
	for subject, parts := range want {
		body, ok := got[subject]
		if !ok {
			t.Errorf("no message %q", subject)
			continue
		}
		for _, p := range parts {
			if !strings.Contains(body, p) {
				t.Errorf("%q lacks %q:\n%s", subject, p, body)
			}
		}
	}
	var reason string
	if err := pool.QueryRow(ctx, `SELECT status || ': ' || last_error FROM mail_messages WHERE key = 'overdue:i3:1'`).Scan(&reason); err != nil ||
		reason != "cancelled: the invoice was paid before the notice went out" {
		t.Errorf("the overdue notice of the invoice paid meanwhile: %q (%v)", reason, err)
	}

	// Redelivered after they were applied and sent (their marks deleted,
	// as if a replay from the start), the events queue nothing new.
	if _, err := pool.Exec(ctx, `DELETE FROM consumer_applied WHERE group_id = 'notify'; DELETE FROM consumer_offsets WHERE group_id = 'notify'`); err != nil {
		t.Fatal(err)
	}
	consume(t, pool, seeds, 2*len(first))
	sendMail(t, pool, srv)
	if n := len(srv.Messages()); n != len(want) {
		t.Errorf("after a replay the server took %d messages, want still %d", n, len(want))
	}
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM mail_messages`).Scan(&rows); err != nil || rows != len(want)+1 {
		t.Errorf("%d messages queued (%v), want %d", rows, err, len(want)+1)
	}
}

func TestWithoutMailNothingIsQueuedButContactsAreKept(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	ctx := context.Background()
	recs := []*kgo.Record{
		event(t, "tally.customer.created.v1", "c1", obj{"id": "c1", "name": "Ada", "email": "ada@example.com", "created_at": stamp, "updated_at": stamp}),
		event(t, "tally.invoice.payment_received.v1", "i1", obj{"invoice_id": "i1", "customer_id": "c1", "payment_id": "p1",
			"currency": "EUR", "amount": 1000, "paid_at": "2025-03-10", "total": 1000, "amount_paid": 1000, "amount_due": 0}),
	}
	if err := testenv.Client(t, seeds).ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	c, err := consumer.New(pool, notify.Group(), consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(cctx) }()
	applied(t, pool, len(recs))
	cancel()
	<-done
	var messages int
	var email string
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM mail_messages), (SELECT email FROM mail_contacts WHERE customer_id = 'c1')`).
		Scan(&messages, &email); err != nil {
		t.Fatal(err)
	}
	if messages != 0 || email != "ada@example.com" {
		t.Errorf("%d messages queued, contact %q; want none, and the contact kept", messages, email)
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
