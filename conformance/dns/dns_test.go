package dns_test

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	conf "github.com/wardproxy/ward/conformance/dns"
	dnsproxy "github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/policy"
)

// The mediabot policy: DNS to the resolver allowed for api.github.test and
// *.github.test; toFQDNs selecting the same names.
var (
	rules = []policy.PortRuleDNS{{MatchName: "api.github.test"}, {MatchPattern: "*.github.test"}}
	sels  = []policy.PortRuleDNS{{MatchName: "api.github.test"}, {MatchPattern: "*.github.test"}}
)

type oneEndpoint struct{}

func (oneEndpoint) Endpoint(netip.Addr) (uint64, uint32, bool) { return 7, 1234, true }

type staticRules struct{ m *dnsproxy.Matcher }

func (s staticRules) DNSRules(uint64, netip.AddrPort) (*dnsproxy.Matcher, bool) { return s.m, true }

type proxy struct {
	p    *dnsproxy.Proxy
	ipc  *dnsproxy.MemIPCache
	stop func()
}

func startProxy(t *testing.T, upstream netip.AddrPort, cfg dnsproxy.Config) *proxy {
	t.Helper()
	m, err := dnsproxy.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	cfg.UDPAddr, cfg.TCPAddr, cfg.Upstream = "127.0.0.1:0", "127.0.0.1:0", upstream
	if cfg.UpdateTimeout == 0 {
		cfg.UpdateTimeout = 10 * time.Second
	}
	ipc := &dnsproxy.MemIPCache{}
	p, err := dnsproxy.New(cfg, dnsproxy.Deps{
		Endpoints: oneEndpoint{}, Rules: staticRules{m}, IPCache: ipc, Identities: &dnsproxy.LocalAllocator{},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetSelectors(sels); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}
	t.Cleanup(stop)
	return &proxy{p: p, ipc: ipc, stop: stop}
}

func TestMediabotWithUnboundAndDig(t *testing.T) {
	ub := conf.StartUnbound(t, conf.Mediabot, conf.UnboundConfig{})
	px := startProxy(t, ub.Addr, dnsproxy.Config{})
	tests := []struct {
		name    string
		qname   string
		args    []string
		status  string
		wantIPs []string
	}{
		{name: "allowed name resolves", qname: "api.github.test", status: "NOERROR", wantIPs: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}},
		{name: "allowed over TCP", qname: "api.github.test", args: []string{"+tcp"}, status: "NOERROR", wantIPs: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}},
		{name: "pattern name resolves", qname: "support.github.test", status: "NOERROR", wantIPs: []string{"192.0.2.10"}},
		{name: "pattern does not match the bare domain", qname: "github.test", status: "REFUSED"},
		{name: "bare domain refused over TCP", qname: "github.test", args: []string{"+tcp"}, status: "REFUSED"},
		{name: "other name refused", qname: "example.test", status: "REFUSED"},
		{name: "pattern is one label deep", qname: "a.b.github.test", status: "REFUSED"},
		{name: "allowed name the zone lacks", qname: "nope.github.test", status: "NXDOMAIN"},
		{name: "CNAME chain", qname: "www.github.test", status: "NOERROR", wantIPs: []string{"192.0.2.20"}},
		{name: "AAAA", qname: "v6.github.test", args: []string{"AAAA"}, status: "NOERROR", wantIPs: []string{"2001:db8::6"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := conf.Dig(t, nil, px.p.UDPAddr(), tt.qname, tt.args...)
			if r.Status != tt.status {
				t.Fatalf("dig %s %v: status %q; want %q\n%s", tt.qname, tt.args, r.Status, tt.status, r.Output)
			}
			if !r.EDNS {
				t.Errorf("dig %s: answer without EDNS\n%s", tt.qname, r.Output)
			}
			got := r.IPs()
			slices.Sort(got)
			if !slices.Equal(got, tt.wantIPs) {
				t.Fatalf("dig %s: IPs %v; want %v", tt.qname, got, tt.wantIPs)
			}
			// DNS before connect: dig has exited, so every IP must already
			// be in the ipcache with an FQDN identity.
			for _, s := range got {
				id, ok := px.ipc.Lookup(netip.MustParseAddr(s))
				if !ok || id < dnsproxy.MinFQDNIdentity {
					t.Errorf("ipcache[%s] = %d, %v; want an FQDN identity", s, id, ok)
				}
			}
		})
	}
	// The CNAME chain collapses onto the query name with the lowest TTL.
	for _, e := range px.p.Cache().Entries() {
		if e.IP == netip.MustParseAddr("192.0.2.20") {
			if e.Name != "www.github.test" {
				t.Errorf("192.0.2.20 cached under %q; want www.github.test", e.Name)
			}
			if left := time.Until(e.Expires); left > 21*time.Second {
				t.Errorf("chain TTL left %v; want at most the lowest (20s)", left)
			}
		}
	}
}

func TestRejectNXDomainOption(t *testing.T) {
	ub := conf.StartUnbound(t, conf.Mediabot, conf.UnboundConfig{})
	px := startProxy(t, ub.Addr, dnsproxy.Config{RejectNXDomain: true})
	for _, args := range [][]string{nil, {"+tcp"}} {
		if r := conf.Dig(t, nil, px.p.UDPAddr(), "github.test", args...); r.Status != "NXDOMAIN" {
			t.Errorf("dig github.test %v: status %q; want NXDOMAIN\n%s", args, r.Status, r.Output)
		}
	}
	if r := conf.Dig(t, nil, px.p.UDPAddr(), "api.github.test"); r.Status != "NOERROR" {
		t.Errorf("dig api.github.test: status %q; want NOERROR", r.Status)
	}
}

func TestTTLExpiryRemovesIP(t *testing.T) {
	ub := conf.StartUnbound(t, conf.Mediabot, conf.UnboundConfig{})
	px := startProxy(t, ub.Addr, dnsproxy.Config{GCInterval: 100 * time.Millisecond})
	r := conf.Dig(t, nil, px.p.UDPAddr(), "short.github.test")
	if r.Status != "NOERROR" || len(r.Answers) != 1 || r.Answers[0].TTL > 2 {
		t.Fatalf("dig short.github.test: %+v; want one A with TTL ≤ 2\n%s", r.Answers, r.Output)
	}
	ip := netip.MustParseAddr("192.0.2.30")
	if _, ok := px.ipc.Lookup(ip); !ok {
		t.Fatalf("ipcache lacks %s right after the answer", ip)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, ok := px.ipc.Lookup(ip); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still in the ipcache 60s after its 2s TTL", ip)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(px.p.Cache().Entries()); n != 0 {
		t.Errorf("cache still has %d entries", n)
	}
}

func TestCachePersistsAcrossRestart(t *testing.T) {
	ub := conf.StartUnbound(t, conf.Mediabot, conf.UnboundConfig{})
	state := filepath.Join(t.TempDir(), "fqdn-state.json")
	px := startProxy(t, ub.Addr, dnsproxy.Config{StateFile: state})
	if r := conf.Dig(t, nil, px.p.UDPAddr(), "api.github.test"); r.Status != "NOERROR" {
		t.Fatalf("dig: %s", r.Status)
	}
	px.stop()

	// A new proxy, a fresh (empty) ipcache: the restored cache refills it
	// before any query.
	px2 := startProxy(t, ub.Addr, dnsproxy.Config{StateFile: state})
	ip := netip.MustParseAddr("192.0.2.1")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := px2.ipc.Lookup(ip); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored proxy did not put %s back into the ipcache", ip)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := px2.p.Cache().Lookup(7, "api.github.test", time.Now()); len(got) != 3 {
		t.Errorf("restored cache has %v for api.github.test; want 3 IPs", got)
	}
}
