package relay

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/outbox"
)

// lockQueryTimeout bounds every round of queries on the lock connection. A
// round that takes longer means the connection is gone (a half-open TCP
// connection can otherwise hang for minutes), and the relay stops acting on
// locks it may no longer hold.
const lockQueryTimeout = 5 * time.Second

// own keeps the relay's membership and its share of the shards until ctx
// ends, reconnecting after a lost lock connection.
func (r *Relay) own(ctx context.Context, pumpDone <-chan struct{}) {
	bo := newBackoff()
	for {
		joined, err := r.session(ctx, pumpDone)
		r.ready.Store(false)
		if err == nil {
			return // left after ctx ended
		}
		if joined {
			bo.Reset() // a session that worked starts the next one afresh
		}
		r.m.errors.WithLabelValues("ownership").Inc()
		r.abandon(ctx)
		if ctx.Err() != nil {
			return
		}
		d := bo.NextBackOff()
		r.log.Error("relay lost its lock connection; its shards are free for others", "err", err, "retry_in", d)
		sleep(ctx, d)
		if ctx.Err() != nil {
			return
		}
	}
}

// session holds one lock connection: it joins as a member, then balances
// shards every rebalance interval until the connection fails (an error) or
// ctx ends (a graceful leave, nil). joined says whether it became a member.
// Once joined, the queries run to their end whatever ctx does, so that a
// stop always goes through leave.
func (r *Relay) session(ctx context.Context, pumpDone <-chan struct{}) (joined bool, _ error) {
	conn, err := r.connect(ctx, "tally-relay-lock")
	if err != nil {
		return false, fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", lockMember, randomMember()).Scan(&ok); err != nil {
			return false, fmt.Errorf("joining: %w", err)
		}
		if ok {
			break
		}
	}
	r.ready.Store(true)
	tick := time.NewTimer(0)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, r.leave(ctx, conn, pumpDone)
		case <-tick.C:
		}
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockQueryTimeout)
		draining, err := r.balance(qctx, conn)
		cancel()
		if err != nil {
			return true, err
		}
		next := r.rebalance
		if draining {
			next = min(next, 20*time.Millisecond)
		}
		tick.Reset(next)
	}
}

// balance gives up drained shards, then takes or marks for giving up shards
// until this relay owns its fair share, ceil(Shards / members). It reports
// whether shards are still draining.
func (r *Relay) balance(ctx context.Context, conn *pgx.Conn) (draining bool, err error) {
	var members int
	err = conn.QueryRow(ctx, `
		SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::bigint::oid
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		lockMember).Scan(&members)
	if err != nil {
		return false, fmt.Errorf("counting relays: %w", err)
	}
	if err := r.releaseDrained(ctx, conn); err != nil {
		return false, err
	}
	fair := (outbox.Shards + max(members, 1) - 1) / max(members, 1)

	r.mu.Lock()
	owned := 0
	for _, s := range r.shards {
		if !s.draining {
			owned++
		}
	}
	for _, s := range r.shards {
		if owned <= fair {
			break
		}
		if !s.draining {
			s.draining = true
			owned--
		}
	}
	var free []int16
	for i := range int16(outbox.Shards) {
		if _, mine := r.shards[i]; !mine {
			free = append(free, i)
		}
	}
	r.mu.Unlock()

	rand.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	for _, id := range free {
		if owned >= fair {
			break
		}
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", lockShard, int32(id)).Scan(&ok); err != nil {
			return false, fmt.Errorf("taking shard %d: %w", id, err)
		}
		if !ok {
			continue
		}
		pos, err := outbox.Cursor(ctx, conn, id)
		if err != nil {
			return false, err
		}
		r.mu.Lock()
		r.shards[id] = &shard{id: id, readPos: pos, ackPos: pos, savedPos: pos}
		r.mu.Unlock()
		owned++
		r.signal()
	}

	r.mu.Lock()
	for _, s := range r.shards {
		draining = draining || s.draining
	}
	r.m.owned.Set(float64(len(r.shards)))
	r.m.members.Set(float64(members))
	r.mu.Unlock()
	return draining, nil
}

// releaseDrained gives up every draining shard with nothing in flight: it
// saves the shard's position, then unlocks it, so its next owner starts
// exactly where this relay stopped.
func (r *Relay) releaseDrained(ctx context.Context, conn *pgx.Conn) error {
	var done []*shard
	r.mu.Lock()
	for _, s := range r.shards {
		if s.draining && s.inflight == 0 {
			done = append(done, s)
		}
	}
	r.mu.Unlock()
	for _, s := range done {
		r.mu.Lock()
		pos := s.ackPos
		r.mu.Unlock()
		if err := outbox.SaveCursors(ctx, conn, []int16{s.id}, []int64{pos}); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1, $2)", lockShard, int32(s.id)); err != nil {
			return fmt.Errorf("giving up shard %d: %w", s.id, err)
		}
		r.mu.Lock()
		delete(r.shards, s.id)
		r.mu.Unlock()
	}
	return nil
}

// leave stops cleanly: once the pump has stopped, it waits (within the
// drain timeout) for Kafka to acknowledge what is in flight, then saves
// every position and gives up every shard. A record still unacknowledged is
// published again by its shard's next owner.
func (r *Relay) leave(ctx context.Context, conn *pgx.Conn, pumpDone <-chan struct{}) error {
	deadline := time.Now().Add(r.drain)
	<-pumpDone
	r.mu.Lock()
	for _, s := range r.shards {
		s.draining = true
	}
	r.mu.Unlock()
	fctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	if err := r.client.Flush(fctx); err != nil {
		r.log.Warn("relay stopping before Kafka acknowledged everything; the rest is published again later", "err", err)
		// The producer closes next, so the safe abort, which waits for
		// requests in flight to be answered, buys nothing but time: fail
		// what was not sent at once, so nothing goes out after the shards
		// are given up.
		r.client.UnsafeAbortBufferedRecords()
	}
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockQueryTimeout)
	defer cancel()
	if err := r.save(qctx); err != nil {
		return err
	}
	if err := r.releaseDrained(qctx, conn); err != nil {
		return err
	}
	r.mu.Lock()
	r.m.owned.Set(float64(len(r.shards)))
	r.mu.Unlock()
	return nil
}

// abandon forgets every shard after the lock connection was lost: their
// locks are gone, so another relay may already own them. Records not yet
// sent are aborted so they cannot land after the new owner's; positions
// already acknowledged are still saved, which is safe because cursors only
// move forward and the events are on Kafka.
func (r *Relay) abandon(ctx context.Context) {
	r.mu.Lock()
	for _, s := range r.shards {
		s.draining = true
	}
	r.mu.Unlock()
	// Wait out any produce that checked its shard before it was marked.
	r.producing.Lock()
	r.producing.Unlock()

	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.drain)
	defer cancel()
	if err := r.client.AbortBufferedRecords(actx); err != nil {
		r.log.Warn("relay aborting buffered records", "err", err)
	}
	if err := r.save(actx); err != nil {
		r.log.Warn("relay saving cursors of abandoned shards", "err", err)
	}
	r.mu.Lock()
	clear(r.shards)
	r.m.owned.Set(0)
	r.mu.Unlock()
}
