// Package notify is the notify consumer group: it tells external systems
// what happened. For each event of its topics it writes, in the
// transaction that applies the event, one webhook delivery per enabled
// endpoint whose event-type filter takes the event's type (see
// internal/webhook: a customer's creation is its welcome, a payment
// received its receipt, and the revenue and KPI events go to the
// endpoints that ask for them); the webhook sender then sends them.
//
// Exactly-once intent: the runtime applies an event once, and a delivery
// is unique by (event, endpoint), so an event seen again (a redelivery, a
// replay) writes nothing new, and each delivery is sent until it succeeds
// once. An endpoint registered after an event gets none of it.
//
// The group declares no projection to rebuild: its deliveries are effects
// on the world, which a rebuild would repeat. It is Unordered: webhooks do
// not promise order (receivers order by the payload's timestamp), so a
// record that fails does not hold back its key.
package notify

import (
	"context"
	"slices"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/topics"
)

// Topics the group reads.
var Topics = []string{"tally.customers.v1", "tally.invoices.v1", "tally.revenue.v1", "tally.kpis.v1"}

// Group returns the notify group's declaration: every event type of its
// topics is handled, filters deciding which endpoints get it.
func Group() *consumer.Group {
	g := consumer.NewGroup("notify", Topics...).Unordered()
	for _, t := range topics.Catalogue(nil) {
		if slices.Contains(Topics, t.Name) {
			for _, typ := range t.Types {
				consumer.Handle(g, typ, deliver)
			}
		}
	}
	return g
}

// deliver writes the event's deliveries; the payload is passed on as it
// is, validated by the runtime against its schema.
func deliver(_ context.Context, tx consumer.Tx, e consumer.Event[struct{}]) error {
	tx.Queue(`INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, event_time, payload)
		SELECT id, $1, $2, $3, $4::jsonb FROM webhook_endpoints
		WHERE enabled AND webhook_type_matches(event_types, $2)
		ON CONFLICT (event_id, endpoint_id) DO NOTHING`, e.ID, e.Type, e.Time, string(e.Data))
	return nil
}
