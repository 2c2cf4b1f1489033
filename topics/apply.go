package topics

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// Drift is a difference between the catalogue and a topic that exists.
type Drift struct {
	Topic string
	What  string // "partitions" or a config name
	Want  string
	Have  string
}

func (d Drift) String() string {
	return fmt.Sprintf("%s: %s is %s, the catalogue says %s", d.Topic, d.What, d.Have, d.Want)
}

// Report is what Apply did and found.
type Report struct {
	Created []string
	Drift   []Drift
}

// Apply creates every topic of ts that the cluster lacks, with its partitions
// and configs and the given replication factor (-1 for the broker's default),
// and reports how existing topics differ from ts. It changes nothing that
// exists: partitions because that would move keys, configs because an
// operator may have tuned them on purpose.
func Apply(ctx context.Context, adm *kadm.Client, ts []Topic, replication int16) (Report, error) {
	var rep Report
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	details, err := adm.ListTopics(ctx, names...)
	if err != nil {
		return rep, fmt.Errorf("listing topics: %w", err)
	}
	var existing []string
	byName := make(map[string]Topic, len(ts))
	for _, t := range ts {
		byName[t.Name] = t
		d, ok := details[t.Name]
		if ok && d.Err == nil {
			existing = append(existing, t.Name)
			if have := int32(len(d.Partitions)); have != t.Partitions {
				rep.Drift = append(rep.Drift, Drift{t.Name, "partitions", fmt.Sprint(t.Partitions), fmt.Sprint(have)})
			}
			continue
		}
		if ok && !errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			return rep, fmt.Errorf("describing topic %s: %w", t.Name, d.Err)
		}
		cfgs := make(map[string]*string, len(t.Configs))
		for k, v := range t.Configs {
			cfgs[k] = kadm.StringPtr(v)
		}
		resp, err := adm.CreateTopic(ctx, t.Partitions, replication, cfgs, t.Name)
		switch {
		case err == nil:
			rep.Created = append(rep.Created, t.Name)
		case errors.Is(err, kerr.TopicAlreadyExists):
			// Another apply won the race; check it like any existing topic.
			existing = append(existing, t.Name)
		default:
			return rep, fmt.Errorf("creating topic %s: %w %s", t.Name, err, resp.ErrMessage)
		}
	}
	if len(existing) == 0 {
		return rep, nil
	}
	rcs, err := adm.DescribeTopicConfigs(ctx, existing...)
	if err != nil {
		return rep, fmt.Errorf("describing topic configs: %w", err)
	}
	for _, name := range existing {
		t := byName[name]
		rc, err := rcs.On(name, nil)
		if err == nil {
			err = rc.Err
		}
		if err != nil {
			return rep, fmt.Errorf("describing configs of %s: %w", t.Name, rc.Err)
		}
		have := make(map[string]string, len(rc.Configs))
		for _, c := range rc.Configs {
			have[c.Key] = c.MaybeValue()
		}
		for _, k := range sortedKeys(t.Configs) {
			if have[k] != t.Configs[k] {
				rep.Drift = append(rep.Drift, Drift{t.Name, k, t.Configs[k], quoteEmpty(have[k])})
			}
		}
	}
	return rep, nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}
