package outbox

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
)

// A Forward is a whole Kafka record the relay publishes as it is, headers
// and key included: what a consumer group sends to its retry tiers and
// dead-letter topic. Unlike an event it is not validated against a schema:
// it carries a record the group could not apply, whatever its bytes.
type Forward struct {
	Topic   string
	Key     []byte
	Value   []byte // a nil value is published as an empty one
	Headers []kgo.RecordHeader
	Source  string // who forwards it, for the audit trail, e.g. "/tally/consumer/revenue"
}

// HeaderValueOmitted is set on a forward whose value was left out because
// the record would not fit Kafka's default size limit; its value is the
// size left out. The parked copy in PostgreSQL keeps the whole record.
const HeaderValueOmitted = "tally-value-omitted"

// QueueForwards queues forwards on b, like Queue: each goes to the shard of
// its key, behind what the transaction queued before it for that key, and
// shards are taken in ascending order.
func QueueForwards(b *pgx.Batch, fs ...Forward) error {
	type row struct {
		shard int16
		key   string
		f     Forward
	}
	rows := make([]row, len(fs))
	for i, f := range fs {
		if f.Topic == "" || f.Source == "" {
			return fmt.Errorf("%w: a forward needs a topic and a source", ErrInvalidEvent)
		}
		if size := len(f.Value) + headerBytes(f.Headers); size > MaxPayloadBytes {
			f.Headers = append(f.Headers[:len(f.Headers):len(f.Headers)],
				kgo.RecordHeader{Key: HeaderValueOmitted, Value: []byte(strconv.Itoa(len(f.Value)))})
			f.Value = nil
		}
		if f.Value == nil {
			f.Value = []byte{}
		}
		key := storableKey(f.Key)
		rows[i] = row{ShardOf(key), key, f}
	}
	slices.SortStableFunc(rows, func(a, b row) int { return int(a.shard) - int(b.shard) })
	now := time.Now().UTC()
	for _, r := range rows {
		b.Queue(insertForwardSQL, r.shard, r.f.Topic, r.key, envelope.NewID(), r.f.Source, now, r.f.Value,
			envelope.MarshalHeaders(r.f.Headers), r.f.Key)
	}
	return nil
}

// insertForwardSQL is insertSQL for one forward: no envelope attributes,
// but headers and the record key.
const insertForwardSQL = `
WITH h AS (UPDATE outbox_heads SET head = head + 1 WHERE shard = $1 RETURNING head)
INSERT INTO outbox (shard, seq, topic, key, id, type, source, subject, sequence, time,
                    correlation_id, payload, headers, record_key)
VALUES ($1, (SELECT head FROM h), $2, $3, $4, '', $5, $3, 0, $6, '', $7, $8::jsonb, $9)`

// storableKey is the text form of a record key that the outbox shards and
// indexes by: the key itself when it is valid UTF-8 without NUL, else its
// Go-quoted form (the record keeps the bytes).
func storableKey(k []byte) string {
	s := string(k)
	if strings.ContainsRune(s, 0) || !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	return s
}

func headerBytes(hs []kgo.RecordHeader) int {
	n := 0
	for _, h := range hs {
		n += len(h.Key) + len(h.Value)
	}
	return n
}
