// Package dispatch runs the work a process claims from PostgreSQL (webhook
// deliveries, email messages) with bounded concurrency: it claims as much
// as it has room for, runs each piece in a goroutine of its own, and claims
// again when a quarter of its slots are free or, idle, every poll interval.
package dispatch

import (
	"context"
	"sync"
	"time"
)

// Loop is one process's claiming loop.
type Loop[T any] struct {
	// Concurrency bounds the pieces in flight; it must be positive.
	Concurrency int
	// Poll is how long an idle loop waits before claiming again.
	Poll time.Duration
	// Claim claims at most n pieces. An error is passed to OnError, and
	// the loop goes on.
	Claim func(ctx context.Context, n int) ([]T, error)
	// Work does one piece; it is called with the loop's context, which
	// ends when the loop stops, and must record its own outcome.
	Work func(ctx context.Context, piece T)
	// Every, if not nil, is called before claiming at most once every ten
	// polls (to refresh gauges, say).
	Every func(ctx context.Context)
	// OnError receives Claim's errors, except those of a loop stopping.
	OnError func(error)
}

// Run claims and works until ctx ends, then waits for the pieces in
// flight to return. It returns nil.
func (l Loop[T]) Run(ctx context.Context) error {
	slots := make(chan struct{}, l.Concurrency)
	done := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	var ticked time.Time
	for {
		if l.Every != nil && time.Since(ticked) >= 10*l.Poll {
			l.Every(ctx)
			ticked = time.Now()
		}
		free := l.Concurrency - len(slots)
		var ps []T
		// A claim costs a query however little it takes: with pieces in
		// flight, claim once a quarter of the slots are free, not one by
		// one as each piece ends.
		if free > 0 && (free == l.Concurrency || free >= max(1, l.Concurrency/4)) {
			var err error
			if ps, err = l.Claim(ctx, free); err != nil && ctx.Err() == nil {
				l.OnError(err)
			}
		}
		for _, p := range ps {
			slots <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.Work(ctx, p)
				<-slots
				select {
				case done <- struct{}{}:
				default:
				}
			}()
		}
		if free > 0 && len(ps) == free {
			continue // there may be more due
		}
		select {
		case <-ctx.Done():
			return nil
		case <-done:
		case <-time.After(l.Poll):
		}
	}
}
