// Package notify is the notify consumer group: it tells people and
// external systems what happened.
//
// Webhooks: for each event of its topics it writes, in the transaction
// that applies the event, one webhook delivery per enabled endpoint whose
// event-type filter takes the event's type (see internal/webhook); the
// webhook sender then sends them. An endpoint registered after an event
// gets none of it.
//
// Email (with WithMail): it queues, in the same transaction, the messages
// of internal/mail: a welcome on a customer's creation through the API
// (not through a CSV import, whose customers carry an external_id:
// importing another system's customers must not greet them all), a
// receipt on each
// payment (worded for a partial payment or for one that settles the
// invoice), a reminder on each tally.invoice.reminder_sent.v1 and an
// overdue notice on each tally.invoice.overdue.v1, which the scheduler
// produces once per invoice and step after checking the invoice at
// sending time. A reminder or notice not yet sent is cancelled when the
// invoice is paid, voided or deleted meanwhile. Whether or not it sends
// email, the group keeps the customers' addresses (mail_contacts), so
// that switching email on later reaches the customers made before.
//
// Exactly-once intent: the runtime applies an event once; a delivery is
// unique by (event, endpoint) and a message by its key (the customer's
// welcome, the payment's receipt, the invoice's step), so an event seen
// again (a redelivery, a replay) writes nothing new, and each is sent until
// it succeeds once.
//
// The group declares no projection to rebuild: its deliveries are effects
// on the world, which a rebuild would repeat. It is Unordered: webhooks do
// not promise order (receivers order by the payload's timestamp), so a
// record that fails does not hold back its key; the contacts keep the
// latest version of each customer whatever the order they arrive in.
package notify

import (
	"context"
	"fmt"
	"slices"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/internal/money"
	"github.com/tally-dev/tally/topics"
)

// Topics the group reads.
var Topics = []string{"tally.customers.v1", "tally.invoices.v1", "tally.revenue.v1", "tally.kpis.v1"}

// Option configures the group.
type Option func(*options)

type options struct{ mail bool }

// WithMail queues email for customers (see the package's doc). Without
// it, the group only writes webhook deliveries and keeps the contacts: a
// process that sends no email must not pile up messages that a later one
// would send, stale.
func WithMail() Option { return func(o *options) { o.mail = true } }

// Group returns the notify group's declaration: every event type of its
// topics is handled, filters deciding which endpoints get it.
func Group(opts ...Option) *consumer.Group {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	g := consumer.NewGroup("notify", Topics...).Unordered()
	special := map[string]bool{}
	handle := func(typ string, fn func(context.Context, consumer.Tx, consumer.Event[payload]) error) {
		special[typ] = true
		consumer.Handle(g, typ, func(ctx context.Context, tx consumer.Tx, e consumer.Event[payload]) error {
			deliver(tx, e.Event)
			return fn(ctx, tx, e)
		})
	}
	handle("tally.customer.created.v1", func(_ context.Context, tx consumer.Tx, e consumer.Event[payload]) error {
		mail.SaveContact(tx, e.Payload.ID, e.Payload.Name, e.Payload.Email, e.Sequence)
		if !o.mail || e.Payload.ExternalID != "" {
			return nil
		}
		return mail.Queue(tx, mail.Message{Key: "welcome:" + e.Payload.ID, Kind: mail.KindWelcome, EventID: e.ID,
			CustomerID: e.Payload.ID}, e.Time)
	})
	handle("tally.customer.updated.v1", func(_ context.Context, tx consumer.Tx, e consumer.Event[payload]) error {
		mail.SaveContact(tx, e.Payload.ID, e.Payload.Name, e.Payload.Email, e.Sequence)
		return nil
	})
	handle("tally.invoice.payment_received.v1", func(_ context.Context, tx consumer.Tx, e consumer.Event[payload]) error {
		if !o.mail {
			return nil
		}
		p := e.Payload
		data, err := amounts(p.Currency, map[string]int64{"amount": p.Amount, "total": p.Total,
			"amount_paid": p.AmountPaid, "amount_due": p.AmountDue})
		if err != nil {
			return err
		}
		data["invoice_id"], data["payment_id"], data["paid_at"], data["paid_in_full"] = p.InvoiceID, p.PaymentID, p.PaidAt, p.AmountDue == 0
		return mail.Queue(tx, mail.Message{Key: "receipt:" + p.PaymentID, Kind: mail.KindReceipt, EventID: e.ID,
			CustomerID: p.CustomerID, Data: data}, e.Time)
	})
	notice := func(kind string) func(context.Context, consumer.Tx, consumer.Event[payload]) error {
		return func(_ context.Context, tx consumer.Tx, e consumer.Event[payload]) error {
			if !o.mail {
				return nil
			}
			p := e.Payload
			data, err := amounts(p.Currency, map[string]int64{"total": p.Total, "amount_due": p.AmountDue})
			if err != nil {
				return err
			}
			data["invoice_id"], data["due_at"] = p.ID, p.DueAt
			if kind == mail.KindReminder {
				data["days_to_due"] = -p.Notice.DaysPastDue
			} else {
				data["days_past_due"] = p.Notice.DaysPastDue
			}
			return mail.Queue(tx, mail.Message{Key: fmt.Sprintf("%s:%s:%d", kind, p.ID, p.Notice.Step), Kind: kind,
				EventID: e.ID, CustomerID: p.CustomerID, InvoiceID: p.ID, Data: data}, e.Time)
		}
	}
	handle("tally.invoice.reminder_sent.v1", notice(mail.KindReminder))
	handle("tally.invoice.overdue.v1", notice(mail.KindOverdue))
	for typ, why := range map[string]string{"tally.invoice.paid.v1": "the invoice was paid",
		"tally.invoice.voided.v1": "the invoice was voided", "tally.invoice.deleted.v1": "the invoice was deleted"} {
		handle(typ, func(_ context.Context, tx consumer.Tx, e consumer.Event[payload]) error {
			mail.SettleInvoice(tx, e.Subject, why+" before the notice went out")
			return nil
		})
	}
	for _, t := range topics.Catalogue(nil) {
		if slices.Contains(Topics, t.Name) {
			for _, typ := range t.Types {
				if !special[typ] {
					consumer.Handle(g, typ, func(_ context.Context, tx consumer.Tx, e consumer.Event[struct{}]) error {
						deliver(tx, e.Event)
						return nil
					})
				}
			}
		}
	}
	return g
}

// payload holds the fields of the events the group reads that its email
// needs: a customer's, a payment's, an invoice's with its notice. The
// runtime has validated the payload against its type's schema.
type payload struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Email      string `json:"email"`
	ExternalID string `json:"external_id"`
	InvoiceID  string `json:"invoice_id"`
	CustomerID string `json:"customer_id"`
	PaymentID  string `json:"payment_id"`
	Currency   string `json:"currency"`
	Amount     int64  `json:"amount"`
	PaidAt     string `json:"paid_at"`
	Total      int64  `json:"total"`
	AmountPaid int64  `json:"amount_paid"`
	AmountDue  int64  `json:"amount_due"`
	DueAt      string `json:"due_at"`
	Notice     struct {
		Step        int `json:"step"`
		DaysPastDue int `json:"days_past_due"`
	} `json:"notice"`
}

// deliver writes the event's webhook deliveries; the payload is passed on
// as it is.
func deliver(tx consumer.Tx, e envelope.Event) {
	tx.Queue(`INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, event_time, payload)
		SELECT id, $1, $2, $3, $4::jsonb FROM webhook_endpoints
		WHERE enabled AND webhook_type_matches(event_types, $2)
		ON CONFLICT (event_id, endpoint_id) DO NOTHING`, e.ID, e.Type, e.Time, string(e.Data))
}

// amounts formats minor units of currency as decimal text, for templates.
func amounts(currency string, minor map[string]int64) (map[string]any, error) {
	c, err := money.ParseCurrency(currency)
	if err != nil {
		return nil, fmt.Errorf("formatting amounts: %w", err)
	}
	out := map[string]any{"currency": currency}
	for k, v := range minor {
		out[k] = money.Format(v, c)
	}
	return out, nil
}
