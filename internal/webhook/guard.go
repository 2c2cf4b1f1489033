package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// ErrForbidden is returned for a webhook URL, or an address it resolves to,
// that the guard refuses: one on the machine itself or an internal network
// (see Guard).
var ErrForbidden = errors.New("forbidden webhook destination")

// Resolver looks up a host's addresses; *net.Resolver is one. Tests give
// the guard their own, to answer what DNS would.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// forbidden are the address ranges no webhook may reach, beyond what
// netip.Addr's predicates name (loopback, private, link-local, multicast,
// unspecified): "this network", shared address space (CGNAT), IETF
// protocol assignments, benchmarking, the reserved 240/4 with the
// broadcast address, and NAT64, which could embed any IPv4 address.
var forbidden = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
}

// Guard keeps webhook deliveries from reaching the machine they run on or
// its internal networks (server-side request forgery): it refuses loopback
// (127/8, ::1), private (RFC 1918, fc00::/7), link-local (169.254/16, among
// them the cloud metadata address 169.254.169.254, fe80::/10), shared
// (CGNAT, 100.64/10), unspecified, multicast and reserved addresses, and
// IPv4-mapped forms of them.
//
// It checks a URL when an endpoint is registered (CheckURL) and again at
// every connection (DialContext): the host is resolved, every address it
// resolves to is checked, and the connection is made to a checked address,
// never to the host name, so a DNS answer that changes between the check
// and the connection (DNS rebinding) cannot slip through. The client it
// makes (Client) does not follow redirects, which the Standard Webhooks
// specification counts as failures anyway.
//
// The allow-list (WithAllow) lets through addresses in given prefixes, and
// hosts by name: tests reach their httptest servers on 127.0.0.1 so, and
// on-premise installations their internal receivers.
type Guard struct {
	allowNets  []netip.Prefix
	allowHosts map[string]bool
	resolver   Resolver
	dialer     *net.Dialer
}

// GuardOpt configures a Guard.
type GuardOpt func(*Guard) error

// WithAllow allows entries, each an address, a CIDR prefix (10.1.0.0/16)
// or a host name (matched case-insensitively, not its subdomains). An
// allowed host name is reached whatever it resolves to.
func WithAllow(entries ...string) GuardOpt {
	return func(g *Guard) error {
		for _, e := range entries {
			e = strings.TrimSpace(e)
			switch {
			case e == "":
			case strings.Contains(e, "/"):
				p, err := netip.ParsePrefix(e)
				if err != nil {
					return fmt.Errorf("webhook allow-list entry %q: %w", e, err)
				}
				g.allowNets = append(g.allowNets, p.Masked())
			default:
				if a, err := netip.ParseAddr(e); err == nil {
					g.allowNets = append(g.allowNets, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
				} else {
					g.allowHosts[strings.ToLower(e)] = true
				}
			}
		}
		return nil
	}
}

// WithResolver resolves hosts with r instead of net.DefaultResolver.
func WithResolver(r Resolver) GuardOpt {
	return func(g *Guard) error { g.resolver = r; return nil }
}

// NewGuard returns a guard.
func NewGuard(opts ...GuardOpt) (*Guard, error) {
	g := &Guard{allowHosts: map[string]bool{}, resolver: net.DefaultResolver,
		dialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}}
	for _, o := range opts {
		if err := o(g); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// checkAddr returns an error wrapping ErrForbidden if a may not be reached.
func (g *Guard) checkAddr(a netip.Addr) error {
	a = a.Unmap()
	for _, p := range g.allowNets {
		if p.Contains(a) {
			return nil
		}
	}
	why := ""
	switch {
	case a.IsLoopback():
		why = "loopback"
	case a.IsPrivate():
		why = "private"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		why = "link-local"
	case a.IsMulticast(), a.IsInterfaceLocalMulticast():
		why = "multicast"
	case a.IsUnspecified():
		why = "unspecified"
	}
	for _, p := range forbidden {
		if why == "" && p.Contains(a) {
			why = "reserved (" + p.String() + ")"
		}
	}
	if why != "" {
		return fmt.Errorf("%w: %s is a %s address", ErrForbidden, a, why)
	}
	return nil
}

// resolve returns the addresses of host, each of them checked, or an error
// wrapping ErrForbidden if any is refused: a host with one internal address
// among public ones is refused outright. An allowed host is not checked.
func (g *Guard) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a}, g.checkAddr(a)
	}
	addrs, err := g.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolving %s: no address", host)
	}
	if g.allowHosts[strings.ToLower(host)] {
		return addrs, nil
	}
	for _, a := range addrs {
		if err := g.checkAddr(a); err != nil {
			return nil, fmt.Errorf("%s resolves to a forbidden address: %w", host, err)
		}
	}
	return addrs, nil
}

// CheckURL returns an error if raw is not an absolute http or https URL
// whose host resolves to addresses the guard allows; a refused address
// wraps ErrForbidden.
func (g *Guard) CheckURL(ctx context.Context, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("must be an http or https URL")
	}
	if u.Hostname() == "" {
		return errors.New("must name a host")
	}
	if u.User != nil {
		return errors.New("must not hold credentials; sign with the endpoint's secret instead")
	}
	_, err = g.resolve(ctx, u.Hostname())
	return err
}

// DialContext connects to addr (host:port) as net.Dialer does, but only to
// an address the guard allows: the host is resolved and checked here, and
// the checked addresses are dialled in turn.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := g.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, a := range addrs {
		c, err := g.dialer.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// Client returns an HTTP client that connects through the guard, gives up
// on a request after timeout (connection, headers and body) and follows no
// redirect: a 3xx is the response.
func (g *Guard) Client(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			// No proxy: a proxy would connect where the guard cannot see.
			DialContext:           g.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: timeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
