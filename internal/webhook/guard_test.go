package webhook_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/tally-dev/tally/internal/webhook"
)

// fakeDNS answers lookups from a table, and counts them.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[string][]string
	asked   map[string]int
}

func newDNS(answers map[string][]string) *fakeDNS {
	return &fakeDNS{answers: answers, asked: map[string]int{}}
}

func (d *fakeDNS) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked[host]++
	var as []netip.Addr
	for _, s := range d.answers[host] {
		as = append(as, netip.MustParseAddr(s))
	}
	if len(as) == 0 {
		return nil, errors.New("no such host")
	}
	return as, nil
}

func (d *fakeDNS) lookups(host string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.asked[host]
}

func TestGuardRefusesInternalAddresses(t *testing.T) {
	dns := newDNS(map[string][]string{
		"hooks.example.com":    {"93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"},
		"internal.example.com": {"10.1.2.3"},
		"mixed.example.com":    {"93.184.215.14", "192.168.1.9"},
		"rebind.example.com":   {"127.0.0.1"},
	})
	g, err := webhook.NewGuard(webhook.WithResolver(dns))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, u := range []string{
		"https://hooks.example.com/tally", "http://93.184.215.14:8080/x", "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
	} {
		if err := g.CheckURL(ctx, u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for class, u := range map[string]string{
		"loopback":            "http://127.0.0.1/",
		"loopback 127/8":      "http://127.8.9.10/",
		"loopback v6":         "http://[::1]/",
		"RFC 1918 10/8":       "http://10.0.0.1/",
		"RFC 1918 172.16/12":  "http://172.20.0.1/",
		"RFC 1918 192.168/16": "http://192.168.0.10/",
		"unique local fc00":   "http://[fd12:3456::1]/",
		"link-local":          "http://169.254.10.10/",
		"metadata":            "http://169.254.169.254/latest/meta-data/",
		"link-local v6":       "http://[fe80::1]/",
		"CGNAT":               "http://100.64.0.1/",
		"unspecified":         "http://0.0.0.0/",
		"unspecified v6":      "http://[::]/",
		"multicast":           "http://224.0.0.1/",
		"multicast v6":        "http://[ff02::1]/",
		"broadcast":           "http://255.255.255.255/",
		"IPv4-mapped":         "http://[::ffff:127.0.0.1]/",
		"DNS to private":      "https://internal.example.com/hook",
		"DNS one of many":     "https://mixed.example.com/hook",
	} {
		if err := g.CheckURL(ctx, u); !errors.Is(err, webhook.ErrForbidden) {
			t.Errorf("%s (%s): %v; want ErrForbidden", class, u, err)
		}
	}
	for _, u := range []string{"ftp://hooks.example.com/", "hooks.example.com/x", "https:///x", "https://u:p@hooks.example.com/", "https://nowhere.example.com/"} {
		if err := g.CheckURL(ctx, u); err == nil || errors.Is(err, webhook.ErrForbidden) {
			t.Errorf("%s: %v; want an error other than ErrForbidden", u, err)
		}
	}

	// At connection time too: a name that resolves to loopback now (DNS
	// rebinding after registration) is refused before any connection.
	if _, err := g.DialContext(ctx, "tcp", "rebind.example.com:80"); !errors.Is(err, webhook.ErrForbidden) {
		t.Errorf("dialling a name resolving to loopback: %v", err)
	}
}

func TestGuardAllowList(t *testing.T) {
	dns := newDNS(map[string][]string{"receiver.internal": {"10.9.8.7"}})
	g, err := webhook.NewGuard(webhook.WithResolver(dns), webhook.WithAllow("127.0.0.1", "192.168.0.0/16", "Receiver.Internal"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, u := range []string{"http://127.0.0.1:9/", "http://192.168.4.4/", "http://receiver.internal/"} {
		if err := g.CheckURL(ctx, u); err != nil {
			t.Errorf("%s refused despite the allow-list: %v", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.2/", "http://10.9.8.7/"} {
		if err := g.CheckURL(ctx, u); !errors.Is(err, webhook.ErrForbidden) {
			t.Errorf("%s: %v; want ErrForbidden", u, err)
		}
	}
	if _, err := webhook.NewGuard(webhook.WithAllow("10.0.0.0/33")); err == nil {
		t.Error("a bad prefix was accepted")
	}
}

func TestGuardClientRefusesAtSendTime(t *testing.T) {
	var hits int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		http.Redirect(w, r, "http://metadata.test/latest/meta-data/", http.StatusFound)
	}))
	defer srv.Close()
	dns := newDNS(map[string][]string{"metadata.test": {"169.254.169.254"}, "receiver.test": {"127.0.0.1"}})
	strict, _ := webhook.NewGuard(webhook.WithResolver(dns))
	port := srv.URL[strings.LastIndex(srv.URL, ":"):]

	// Without the allow-list the test server's loopback address is refused,
	// whether named by address or by a host that resolves to it.
	for _, u := range []string{srv.URL, "http://receiver.test" + port} {
		if _, err := strict.Client(0).Get(u); !errors.Is(err, webhook.ErrForbidden) {
			t.Errorf("GET %s: %v; want ErrForbidden", u, err)
		}
	}
	if hits != 0 {
		t.Fatalf("the refused requests reached the server %d times", hits)
	}

	// Allowed, the server answers a redirect to the metadata address, which
	// the client does not follow: nothing resolves or dials it.
	allowed, _ := webhook.NewGuard(webhook.WithResolver(dns), webhook.WithAllow("127.0.0.1"))
	resp, err := allowed.Client(0).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || hits != 1 || dns.lookups("metadata.test") != 0 {
		t.Errorf("answered %d after %d hits, metadata.test looked up %d times; want the 302 itself, not followed",
			resp.StatusCode, hits, dns.lookups("metadata.test"))
	}
}
