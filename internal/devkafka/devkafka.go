// Package devkafka runs the embedded Kafka broker of `tally dev`: franz-go's
// kfake, one broker on a real TCP port, its log persisted in a folder, so any
// Kafka client (kcat included) can talk to it and its data survives restarts.
// It is for development and tests; it does not replicate or enforce acks.
package devkafka

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/topics"
)

// Start runs a one-broker cluster listening on addr (host:port) and keeping
// its data in dir, which it creates if needed. Close the cluster to persist
// its state; a kill loses at most what the OS had not flushed.
func Start(addr, dir string, log io.Writer) (*kfake.Cluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the broker's data folder: %w", err)
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DataDir(dir),
		// kfake listens on 127.0.0.1 only unless told where; this binds the
		// configured address, which metadata then advertises.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
		kfake.WithLogger(kfake.BasicLogger(log, kfake.LogLevelWarn)),
	)
	if err != nil {
		return nil, fmt.Errorf("starting the embedded Kafka broker on %s: %w", addr, err)
	}
	return c, nil
}

// Ephemeral starts an in-memory one-broker cluster on a random loopback
// port with every topic of the catalogue, for tests and benchmarks. opts add
// to (and may override) its defaults.
func Ephemeral(ctx context.Context, opts ...kfake.Opt) (*kfake.Cluster, error) {
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("starting kfake: %w", err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		c.Close()
		return nil, err
	}
	defer cl.Close()
	if _, err := topics.Apply(ctx, kadm.NewClient(cl), topics.Catalogue(topics.RetryDelays), -1); err != nil {
		c.Close()
		return nil, fmt.Errorf("applying topics: %w", err)
	}
	return c, nil
}
