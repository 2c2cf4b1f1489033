// Package topics is Tally's topic catalogue: every topic, its partitions and
// configs, which event types travel on it, the JSON Schema of each type's
// payload (schemas/), and Apply, which creates what is missing on a cluster
// and reports drift.
//
// A topic's partition count is part of its contract: records are keyed by
// aggregate id, so adding partitions later moves keys and breaks per-key order
// across the change. Apply therefore never changes partitions; it reports.
package topics

import (
	"fmt"
	"strconv"
	"time"
)

// Topic is one catalogue entry.
type Topic struct {
	Name       string
	Partitions int32
	// Key says what the record key is.
	Key string
	// Types are the event types produced to the topic (empty for retry and
	// dead-letter topics, which carry other topics' records).
	Types []string
	// Configs are the topic configs Apply sets at creation and checks after.
	Configs map[string]string
}

// DefaultPartitions is the partition count of every domain topic: it bounds
// how many members of one consumer group can share the work.
const DefaultPartitions = 12

// Groups are the consumer groups; each has retry tiers and a dead-letter
// topic.
var Groups = []string{"revenue", "kpi", "notify"}

// RetryDelays are the default delays of the retry tiers, tier 1 first: a
// record waits at least this long in tally.<group>.retry.<n> before its next
// attempt. The number of delays is the number of tiers (TALLY_RETRY_DELAYS
// sets both).
var RetryDelays = []time.Duration{5 * time.Second, time.Minute, 10 * time.Minute}

// forever keeps records: domain topics are the log projections are rebuilt
// from, so they are never deleted by time or size.
var forever = map[string]string{"cleanup.policy": "delete", "retention.ms": "-1"}

// Catalogue returns every topic of Tally, domain topics first, with as many
// retry tiers per group as retryDelays has delays.
func Catalogue(retryDelays []time.Duration) []Topic {
	ts := domain()
	for _, g := range Groups {
		ts = append(ts, GroupTopics(g, retryDelays)...)
	}
	return ts
}

// GroupTopics returns the topics of consumer group g: a retry topic per
// delay of retryDelays, then its dead-letter topic.
func GroupTopics(g string, retryDelays []time.Duration) []Topic {
	var ts []Topic
	for n, d := range retryDelays {
		ts = append(ts, Topic{
			Name:       RetryTopic(g, n+1),
			Partitions: DefaultPartitions,
			Key:        "the original record's key",
			// A retry record is useless long after its delay has passed;
			// keep it a week so an outage of the group loses nothing.
			Configs: map[string]string{
				"cleanup.policy": "delete",
				"retention.ms":   strconv.FormatInt(max(7*24*time.Hour, 10*d).Milliseconds(), 10),
			},
		})
	}
	return append(ts, Topic{
		Name:       DeadLetterTopic(g),
		Partitions: DefaultPartitions,
		Key:        "the original record's key",
		Configs:    forever,
	})
}

// domain returns the topics events are produced to.
func domain() []Topic {
	ts := []Topic{
		{Name: "tally.customers.v1", Key: "customer id", Types: []string{
			"tally.customer.created.v1", "tally.customer.updated.v1",
		}},
		{Name: "tally.invoices.v1", Key: "invoice id", Types: []string{
			"tally.invoice.created.v1", "tally.invoice.updated.v1", "tally.invoice.paid.v1",
			"tally.invoice.voided.v1", "tally.invoice.deleted.v1", "tally.invoice.payment_received.v1",
			"tally.invoice.reminder_sent.v1", "tally.invoice.overdue.v1",
		}},
		{Name: "tally.sales.v1", Key: "sale id", Types: []string{
			"tally.sale.created.v1", "tally.sale.updated.v1", "tally.sale.deleted.v1",
		}},
		{Name: "tally.expenses.v1", Key: "expense id", Types: []string{
			"tally.expense.created.v1", "tally.expense.updated.v1", "tally.expense.deleted.v1",
		}},
		{Name: "tally.revenue.v1", Key: "invoice id", Types: []string{
			"tally.revenue.deferred.v1", "tally.revenue.recognized.v1", "tally.revenue.adjusted.v1", "tally.revenue.reversed.v1",
		}},
		{Name: "tally.kpis.v1", Key: "KPI and period", Types: []string{"tally.kpi.calculated.v1"},
			// Only the latest value of a KPI for a period matters.
			Configs: map[string]string{"cleanup.policy": "compact"}},
		{Name: "tally.imports.v1", Key: "import id", Types: []string{"tally.import.completed.v1"}},
	}
	for i := range ts {
		ts[i].Partitions = DefaultPartitions
		if ts[i].Configs == nil {
			ts[i].Configs = forever
		}
	}
	return ts
}

// RetryTopic names tier n (from 1) of group's retry topics.
func RetryTopic(group string, n int) string { return fmt.Sprintf("tally.%s.retry.%d", group, n) }

// DeadLetterTopic names group's dead-letter topic.
func DeadLetterTopic(group string) string { return "tally." + group + ".dlq" }

// byType maps each event type to its topic.
var byType = func() map[string]string {
	m := make(map[string]string)
	for _, t := range domain() {
		for _, typ := range t.Types {
			m[typ] = t.Name
		}
	}
	return m
}()

// TopicOf returns the topic events of type typ are produced to, and false
// for a type the catalogue does not know.
func TopicOf(typ string) (string, bool) {
	t, ok := byType[typ]
	return t, ok
}
