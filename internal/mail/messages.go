// Package mail sends Tally's email: the notify group's messages to
// customers (a welcome, payment receipts, invoice reminders and overdue
// notices) and operational notices (a webhook endpoint disabled).
//
// Messages are queued in PostgreSQL (mail_messages), in the transaction
// of whatever caused them, and a Sender sends them over SMTP, rendering
// each from its kind's templates (plain text and HTML) when it is sent.
// Each message has a unique key: the customer's welcome, the payment's
// receipt, the invoice's reminder step. So a message is queued at most
// once however often its cause is seen again (a redelivered event, a
// replay), and sent until the server takes it once. Prune deletes the
// messages that ended long ago, keys and all; the consumer runtime's
// marks keep their events from being applied again.
//
// The gotcha: SMTP has no idempotency key. A sender that dies after the
// server took a message but before recording it sends the message again
// once the lease lapses. Both copies carry the same Message-ID, derived
// from the key, which mail clients and many servers dedupe on.
//
// A message to a customer names the customer, not an address: the address
// is the customer's at sending time, from the contacts the notify group
// keeps from customer events (mail_contacts). A message whose customer is
// not known yet (its events are on another topic, read independently) is
// tried again later, like a server that is down.
package mail

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Message states.
const (
	// StatePending: not yet sent; next_attempt_at says when it is due.
	StatePending = "pending"
	// StateSent: the SMTP server took it.
	StateSent = "sent"
	// StateFailed: the server refused it for good, or the attempts ran out.
	StateFailed = "failed"
	// StateCancelled: no longer wanted (an invoice reminder whose invoice
	// was settled before it went out).
	StateCancelled = "cancelled"
)

// Message is a message to queue.
type Message struct {
	// Key identifies the message: a second message with the same key is
	// not queued.
	Key  string
	Kind string
	// EventID is the event that caused the message, for the log.
	EventID uuid.UUID
	// To is the recipient; when To.Email is empty, the customer
	// CustomerID's address at sending time is.
	To         Address
	CustomerID string
	// InvoiceID is the invoice the message is about. Once SettleInvoice has
	// settled it, its reminders and overdue notices are not queued, and
	// those still pending are cancelled; other kinds are not concerned.
	InvoiceID string
	Data      map[string]any
}

// Queuer queues a statement in a transaction (consumer.Tx is one);
// QueueFunc makes one of a function.
type Queuer interface {
	Queue(sql string, args ...any)
}

// QueueFunc is a Queuer calling itself.
type QueueFunc func(sql string, args ...any)

// Queue calls f.
func (f QueueFunc) Queue(sql string, args ...any) { f(sql, args...) }

// Queue queues m on q, unless a message with its key was queued before.
func Queue(q Queuer, m Message, at time.Time) error {
	if m.Key == "" || m.Kind == "" {
		return fmt.Errorf("mail: a message needs a key and a kind (got %q, %q)", m.Key, m.Kind)
	}
	if m.To.Email == "" && m.CustomerID == "" {
		return fmt.Errorf("mail: message %s has neither an address nor a customer", m.Key)
	}
	data := m.Data
	if data == nil {
		data = map[string]any{}
	}
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("mail: the data of message %s: %w", m.Key, err)
	}
	q.Queue(`INSERT INTO mail_messages (key, kind, event_id, to_name, to_email, customer_id, invoice_id, data, created_at, next_attempt_at)
		SELECT $1, $2, $3, nullif($4, ''), nullif($5, ''), nullif($6, ''), nullif($7, ''), $8::jsonb, $9, $9
		WHERE $2 NOT IN ('reminder', 'overdue') OR NOT EXISTS (SELECT 1 FROM mail_settled_invoices WHERE invoice_id = $7)
		ON CONFLICT (key) DO NOTHING`,
		m.Key, m.Kind, m.EventID, m.To.Name, m.To.Email, m.CustomerID, m.InvoiceID, string(b), at)
	return nil
}

// SettleInvoice queues on q the end of invoice's notices, because of what
// reason says happened (paid, voided, deleted: for good): those not yet
// sent are cancelled, and none is queued after. One being sent right now
// may still go out.
func SettleInvoice(q Queuer, invoice, reason string) {
	q.Queue(`INSERT INTO mail_settled_invoices (invoice_id) VALUES ($1) ON CONFLICT DO NOTHING`, invoice)
	q.Queue(`UPDATE mail_messages SET status = 'cancelled', last_error = $2, completed_at = now()
		WHERE invoice_id = $1 AND status = 'pending' AND kind IN ('reminder', 'overdue')`, invoice, reason)
}

// SaveContact queues on q the customer's name and address as of its
// version sequence; an older version than the one kept changes nothing.
func SaveContact(q Queuer, customer, name, email string, sequence int64) {
	q.Queue(`INSERT INTO mail_contacts (customer_id, name, email, sequence) VALUES ($1, $2, $3, $4)
		ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, email = excluded.email, sequence = excluded.sequence
		WHERE mail_contacts.sequence < excluded.sequence`, customer, name, email, sequence)
}
