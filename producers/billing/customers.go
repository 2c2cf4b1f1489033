package billing

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/envelope"
)

// Customer is a customer as the API returns it and as its events carry it.
type Customer struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email"`
	// ExternalID is the id the customer had in the CSV file it was
	// imported from; empty for customers made through the JSON API.
	ExternalID string    `json:"external_id,omitempty"`
	Version    int64     `json:"version"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// CustomerInput creates a customer (name and email required) or patches one
// (only the fields given change; the id cannot).
type CustomerInput struct {
	ID    *string `json:"id"`
	Name  *string `json:"name"`
	Email *string `json:"email"`
	// ExternalID is given by the CSV importer only; the JSON API does not
	// take it, nor can a patch change it.
	ExternalID *string `json:"-"`
}

func checkName(p *problems, name string) {
	if !plainText(name, 200) {
		p.add("name", "must be 1 to 200 characters, not blank, without control characters")
	}
}

// plainText reports whether s is valid UTF-8 of 1 to max characters, not
// blank, without control characters (which PostgreSQL text rejects, NUL
// included, and which have no place in a name or a description).
func plainText(s string, max int) bool {
	if !utf8.ValidString(s) || strings.TrimSpace(s) == "" || utf8.RuneCountInString(s) > max {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func checkEmail(p *problems, email string) {
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || a.Name != "" || len(email) > 254 {
		p.add("email", "must be a plain address such as ada@example.com")
	}
}

// NewCustomer validates in, a new customer, and returns the customer it
// makes (version 1, created now) without writing it: CreateCustomer writes
// one, the CSV importer many at once (InsertCustomers).
func NewCustomer(m Meta, in CustomerInput) (Customer, error) {
	var p problems
	id := checkID(&p, in.ID, "cus")
	if in.Name == nil {
		p.required("name")
	} else {
		checkName(&p, *in.Name)
	}
	if in.Email == nil {
		p.required("email")
	} else {
		checkEmail(&p, *in.Email)
	}
	life := newLifecycle(&p, m, in.ExternalID)
	if err := p.err(); err != nil {
		return Customer{}, err
	}
	return Customer{ID: id, Name: *in.Name, Email: *in.Email, ExternalID: life.ExternalID, Version: 1,
		CreatedAt: life.CreatedAt, UpdatedAt: life.UpdatedAt}, nil
}

// CustomerCreated returns the created event of c, a customer NewCustomer
// made with m.
func CustomerCreated(m Meta, c Customer) (envelope.Event, error) {
	return m.event("tally.customer.created.v1", c.ID, c.Version, "", c)
}

// CreateCustomer adds a customer and returns its created event.
func CreateCustomer(ctx context.Context, tx Tx, m Meta, in CustomerInput) (Customer, []envelope.Event, error) {
	c, err := NewCustomer(m, in)
	if err != nil {
		return Customer{}, nil, err
	}
	tx.Queue(`INSERT INTO customers (id, name, email, version, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, c.ID, c.Name, c.Email, c.Version, c.CreatedAt, c.UpdatedAt)
	ev, err := CustomerCreated(m, c)
	if err != nil {
		return Customer{}, nil, err
	}
	return c, []envelope.Event{ev}, nil
}

// UpdateCustomer patches a customer. A patch that changes nothing returns
// the customer as it is and no event.
func UpdateCustomer(ctx context.Context, tx Tx, m Meta, id string, in CustomerInput) (Customer, []envelope.Event, error) {
	var p problems
	if in.ID != nil && *in.ID != id {
		p.add("id", "cannot change")
	}
	if in.Name == nil && in.Email == nil {
		p.add("", "give name or email to change")
	}
	if in.Name != nil {
		checkName(&p, *in.Name)
	}
	if in.Email != nil {
		checkEmail(&p, *in.Email)
	}
	if err := p.err(); err != nil {
		return Customer{}, nil, err
	}
	c, err := getCustomer(ctx, tx, id, true)
	if err != nil {
		return Customer{}, nil, err
	}
	next := c
	if in.Name != nil {
		next.Name = *in.Name
	}
	if in.Email != nil {
		next.Email = *in.Email
	}
	if next == c {
		return c, nil, nil
	}
	next.Version++
	next.UpdatedAt = m.now()
	tx.Queue(`UPDATE customers SET name = $2, email = $3, version = $4, updated_at = $5 WHERE id = $1`,
		next.ID, next.Name, next.Email, next.Version, next.UpdatedAt)
	ev, err := m.event("tally.customer.updated.v1", next.ID, next.Version, "", next)
	if err != nil {
		return Customer{}, nil, err
	}
	return next, []envelope.Event{ev}, nil
}

// GetCustomer reads a customer.
func GetCustomer(ctx context.Context, q Querier, id string) (Customer, error) {
	return getCustomer(ctx, q, id, false)
}

func getCustomer(ctx context.Context, q Querier, id string, lock bool) (Customer, error) {
	sql := `SELECT id, name, email, coalesce(external_id, ''), version, created_at, updated_at FROM customers WHERE id = $1`
	if lock {
		sql += " FOR NO KEY UPDATE"
	}
	var c Customer
	err := q.QueryRow(ctx, sql, id).Scan(&c.ID, &c.Name, &c.Email, &c.ExternalID, &c.Version, &c.CreatedAt, &c.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Customer{}, fmt.Errorf("%w: customer %q", ErrNotFound, id)
	}
	if err != nil {
		return Customer{}, fmt.Errorf("reading customer: %w", err)
	}
	c.CreatedAt, c.UpdatedAt = c.CreatedAt.UTC(), c.UpdatedAt.UTC()
	return c, nil
}

// Querier is a pool, a connection or a transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Tx is the transaction a command runs in (a postgres.Tx). Commands Queue
// the writes whose outcome they do not need to know at once, so that they
// travel with the next statement or the commit; errors they cause come back
// from there, through Explain.
type Tx interface {
	Querier
	Queue(sql string, args ...any)
}
