package mail

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"os"
	"path/filepath"
	texttemplate "text/template"
)

// Kinds of message, one template pair each.
const (
	// KindWelcome greets a new customer. Data: none.
	KindWelcome = "welcome"
	// KindReceipt acknowledges a payment. Data: invoice_id, payment_id,
	// currency, amount, paid_at, total, amount_paid, amount_due (decimal
	// text), paid_in_full (bool: amount_due is zero).
	KindReceipt = "receipt"
	// KindReminder reminds of an open invoice on or before its due date.
	// Data: invoice_id, currency, total, amount_due, due_at, days_to_due
	// (0 on the due date).
	KindReminder = "reminder"
	// KindOverdue tells that an invoice is past due. Data: invoice_id,
	// currency, total, amount_due, due_at, days_past_due (at least 1).
	KindOverdue = "overdue"
	// KindEndpointDisabled tells the operator that a webhook endpoint was
	// disabled. Data: endpoint_id, url, reason, disabled_at.
	KindEndpointDisabled = "endpoint_disabled"
)

// Kinds lists every kind of message.
var Kinds = []string{KindWelcome, KindReceipt, KindReminder, KindOverdue, KindEndpointDisabled}

// Samples are data of each kind as the notify group and the webhook
// sender write them: Templates checks every template against them, so a
// template naming a field its kind lacks fails at start-up, not when its
// first message is due.
var Samples = map[string]map[string]any{
	KindWelcome: {},
	KindReceipt: {"invoice_id": "inv_1", "payment_id": "pay_1", "currency": "EUR", "amount": "40.00",
		"paid_at": "2025-03-10", "total": "100.00", "amount_paid": "40.00", "amount_due": "60.00", "paid_in_full": false},
	KindReminder: {"invoice_id": "inv_1", "currency": "EUR", "total": "100.00", "amount_due": "60.00",
		"due_at": "2025-03-31", "days_to_due": 3},
	KindOverdue: {"invoice_id": "inv_1", "currency": "EUR", "total": "100.00", "amount_due": "60.00",
		"due_at": "2025-03-31", "days_past_due": 7},
	KindEndpointDisabled: {"endpoint_id": "we_1", "url": "https://hooks.example.com/", "reason": "the endpoint answered 410 Gone",
		"disabled_at": "2025-03-31T10:00:00Z"},
}

//go:embed templates
var builtin embed.FS

// View is what a template renders: the recipient, the sender's display
// name (or address, without one) and the message's data.
type View struct {
	To   Address
	From string
	Data map[string]any
}

// Address is a recipient.
type Address struct {
	Name  string
	Email string
}

// Templates renders each kind of message as a subject, a plain-text body
// (KIND.txt, which defines the subject as the template "subject") and an
// HTML body (KIND.html, escaped by html/template). A field a template
// names that the data lacks is an error, not an empty string.
type Templates struct {
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

// LoadTemplates returns the built-in templates, each replaced by the file
// of the same name in dir, if dir is not empty and has it (welcome.txt,
// welcome.html, receipt.txt...). Every template is parsed and rendered
// with Samples: an error names the file at fault.
func LoadTemplates(dir string) (*Templates, error) {
	var over fs.FS
	if dir != "" {
		if st, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("mail templates: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("mail templates: %s is not a directory", dir)
		}
		over = os.DirFS(dir)
	}
	read := func(name string) ([]byte, string, error) {
		if over != nil {
			b, err := fs.ReadFile(over, name)
			if err == nil {
				return b, filepath.Join(dir, name), nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, "", fmt.Errorf("mail templates: %w", err)
			}
		}
		b, err := fs.ReadFile(builtin, "templates/"+name)
		return b, "built-in " + name, err
	}
	t := &Templates{text: map[string]*texttemplate.Template{}, html: map[string]*htmltemplate.Template{}}
	for _, k := range Kinds {
		src, textFile, err := read(k + ".txt")
		if err != nil {
			return nil, err
		}
		tt, err := texttemplate.New(k).Option("missingkey=error").Parse(string(src))
		if err != nil {
			return nil, fmt.Errorf("mail template %s: %w", textFile, err)
		}
		if tt.Lookup("subject") == nil {
			return nil, fmt.Errorf(`mail template %s: no {{define "subject"}}`, textFile)
		}
		t.text[k] = tt
		src, htmlFile, err := read(k + ".html")
		if err != nil {
			return nil, err
		}
		ht, err := htmltemplate.New(k).Option("missingkey=error").Parse(string(src))
		if err != nil {
			return nil, fmt.Errorf("mail template %s: %w", htmlFile, err)
		}
		t.html[k] = ht
		if _, _, _, err := t.Render(k, View{To: Address{Name: "Ada Lovelace", Email: "ada@example.com"},
			From: "Tally", Data: Samples[k]}); err != nil {
			return nil, fmt.Errorf("mail templates %s and %s, with sample data: %w", textFile, htmlFile, err)
		}
	}
	return t, nil
}

// Render renders kind's message for v.
func (t *Templates) Render(kind string, v View) (subject, text, html string, err error) {
	tt, ok := t.text[kind]
	if !ok {
		return "", "", "", fmt.Errorf("mail: no template for the kind %q", kind)
	}
	var s, b, h bytes.Buffer
	if err := tt.ExecuteTemplate(&s, "subject", v); err != nil {
		return "", "", "", fmt.Errorf("rendering the subject of %s: %w", kind, err)
	}
	if err := tt.Execute(&b, v); err != nil {
		return "", "", "", fmt.Errorf("rendering the text of %s: %w", kind, err)
	}
	if err := t.html[kind].Execute(&h, v); err != nil {
		return "", "", "", fmt.Errorf("rendering the HTML of %s: %w", kind, err)
	}
	return s.String(), b.String(), h.String(), nil
}
