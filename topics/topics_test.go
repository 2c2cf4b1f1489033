package topics_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/topics"
)

func TestCatalogueMatchesTheBrief(t *testing.T) {
	t.Parallel()
	names := map[string]topics.Topic{}
	for _, tp := range topics.Catalogue(topics.RetryDelays) {
		if _, dup := names[tp.Name]; dup {
			t.Errorf("topic %s listed twice", tp.Name)
		}
		names[tp.Name] = tp
		if tp.Partitions < 1 {
			t.Errorf("%s has %d partitions", tp.Name, tp.Partitions)
		}
	}
	for _, want := range []string{"tally.customers.v1", "tally.invoices.v1", "tally.sales.v1", "tally.expenses.v1",
		"tally.revenue.v1", "tally.kpis.v1", "tally.imports.v1",
		"tally.revenue.retry.1", "tally.revenue.dlq", "tally.kpi.retry.3", "tally.notify.dlq"} {
		if _, ok := names[want]; !ok {
			t.Errorf("catalogue lacks %s", want)
		}
	}
	for typ, topic := range map[string]string{
		"tally.customer.created.v1":         "tally.customers.v1",
		"tally.invoice.payment_received.v1": "tally.invoices.v1",
		"tally.invoice.paid.v1":             "tally.invoices.v1",
	} {
		if got, ok := topics.TopicOf(typ); !ok || got != topic {
			t.Errorf("TopicOf(%s) = %q, %v; want %s", typ, got, ok, topic)
		}
	}
	if _, ok := topics.TopicOf("tally.invoice.created.v2"); ok {
		t.Error("an unknown version has a topic")
	}
}

// Every type of the catalogue has a schema file and every schema file but
// the shared one belongs to a type, so neither can be forgotten.
func TestEveryTypeHasASchemaAndViceVersa(t *testing.T) {
	t.Parallel()
	types := map[string]bool{}
	for _, tp := range topics.Catalogue(topics.RetryDelays) {
		for _, typ := range tp.Types {
			types[typ] = true
			if _, ok := topics.Schema(typ); !ok {
				t.Errorf("type %s has no schema", typ)
			}
		}
	}
	err := filepath.WalkDir("schemas", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := strings.TrimSuffix(filepath.Base(p), ".json")
		if name != "common" && !types[name] {
			t.Errorf("schema %s belongs to no catalogue type", p)
		}
		b, err := os.ReadFile(p)
		if err == nil && !strings.Contains(string(b), `"$id": "https://schemas.tally.invalid/`+filepath.Base(p)+`"`) {
			t.Errorf("schema %s has an $id that does not match its file name", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	customer := `{"id":"c1","name":"Ada","email":"a@b.c","created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z"}`
	invoice := `{"id":"i1","customer_id":"c1","currency":"USD","status":"paid","issued_at":"2025-01-01","due_at":"2025-01-31",
		"lines":[{"description":"x","amount":100,"quantity":2,"total":200,"service_period":{"start":"2025-01-01","end":"2025-01-31"}}],
		"subtotal":200,"discount":0,"tax":0,"total":200,"amount_paid":200,"amount_due":0,"paid_at":"2025-01-02",
		"created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z"}`
	for _, tc := range []struct {
		typ, payload string
		want         error
	}{
		{"tally.customer.created.v1", customer, nil},
		{"tally.invoice.paid.v1", invoice, nil},
		{"tally.invoice.created.v1", invoice, nil},
		{"tally.invoice.paid.v1", strings.Replace(invoice, `"amount_due":0`, `"amount_due":5`, 1), topics.ErrInvalidPayload},
		{"tally.invoice.voided.v1", invoice, topics.ErrInvalidPayload}, // status paid, no voided_at
		{"tally.invoice.created.v1", strings.Replace(invoice, `"2025-01-31"`, `"2025-02-30"`, 1), topics.ErrInvalidPayload},
		{"tally.invoice.created.v1", strings.Replace(invoice, `"currency":"USD"`, `"currency":"usd"`, 1), topics.ErrInvalidPayload},
		{"tally.invoice.created.v1", strings.Replace(invoice, `"amount":100`, `"amount":1.5`, 1), topics.ErrInvalidPayload},
		{"tally.customer.created.v1", `{"id":"c1"}`, topics.ErrInvalidPayload},
		{"tally.customer.created.v1", `{"id":`, topics.ErrInvalidPayload},
		{"tally.customer.created.v2", customer, topics.ErrUnknownType},
	} {
		err := topics.Validate(tc.typ, []byte(tc.payload))
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("Validate(%s, %.60s…) = %v, want %v", tc.typ, tc.payload, err, tc.want)
		}
	}
}

func TestApplyCreatesWhatIsMissingAndReportsDrift(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// An operator made one topic by hand, wrongly.
	if _, err := adm.CreateTopic(ctx, 3, 1, map[string]*string{"retention.ms": kadm.StringPtr("3600000")}, "tally.invoices.v1"); err != nil {
		t.Fatal(err)
	}
	cat := topics.Catalogue(topics.RetryDelays)
	rep, err := topics.Apply(ctx, adm, cat, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Created) != len(cat)-1 {
		t.Errorf("created %d topics, want %d", len(rep.Created), len(cat)-1)
	}
	drift := map[string]topics.Drift{}
	for _, d := range rep.Drift {
		drift[d.Topic+" "+d.What] = d
	}
	if d, ok := drift["tally.invoices.v1 partitions"]; !ok || d.Have != "3" || d.Want != "12" {
		t.Errorf("partition drift not reported right: %+v", rep.Drift)
	}
	if d, ok := drift["tally.invoices.v1 retention.ms"]; !ok || d.Have != "3600000" || d.Want != "-1" {
		t.Errorf("config drift not reported right: %+v", rep.Drift)
	}
	if len(rep.Drift) != 2 {
		t.Errorf("drift %v, want exactly the partitions and retention of tally.invoices.v1", rep.Drift)
	}
	details, err := adm.ListTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := details["tally.customers.v1"]; len(d.Partitions) != topics.DefaultPartitions {
		t.Errorf("tally.customers.v1 created with %d partitions", len(d.Partitions))
	}

	again, err := topics.Apply(ctx, adm, cat, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Created) != 0 || len(again.Drift) != 2 {
		t.Errorf("a second apply created %v and found drift %v; it must be idempotent", again.Created, again.Drift)
	}
}
