package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
)

// zone is the test upstream's data.
var zone = map[string][]string{
	"api.github.test.":     {"api.github.test. 60 IN A 192.0.2.1", "api.github.test. 30 IN A 192.0.2.2"},
	"support.github.test.": {"support.github.test. 60 IN A 192.0.2.3"},
	"github.test.":         {"github.test. 60 IN A 192.0.2.4"},
	"www.github.test.": {
		"www.github.test. 300 IN CNAME edge.github.test.",
		"edge.github.test. 20 IN CNAME lb.cdn.test.",
		"lb.cdn.test. 60 IN A 192.0.2.5",
		"other.test. 60 IN A 198.51.100.66", // off the chain: never learnt
	},
	"v6.github.test.": {"v6.github.test. 60 IN AAAA 2001:db8::1"},
}

// startUpstream runs a real miekg/dns server on loopback (UDP and TCP on
// the same port) answering from zone; big.github.test gets a large answer,
// truncated over UDP.
func startUpstream(t testing.TB) netip.AddrPort {
	t.Helper()
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) {
		r := new(mdns.Msg)
		r.SetReply(q)
		name := q.Question[0].Name
		switch {
		case name == "big.github.test.":
			for i := range 60 {
				rr, _ := mdns.NewRR("big.github.test. 60 IN A 10.1.0." + itoa(i+1))
				r.Answer = append(r.Answer, rr)
			}
			if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
				r.Answer, r.Truncated = nil, true
			}
		case name == "mismatch.github.test.":
			r.Question[0].Name = "other.test."
		default:
			recs, ok := zone[mdns.CanonicalName(name)]
			if !ok {
				r.Rcode = mdns.RcodeNameError
			}
			for _, s := range recs {
				rr, err := mdns.NewRR(s)
				if err != nil {
					panic(err)
				}
				if q.Question[0].Qtype == rr.Header().Rrtype || rr.Header().Rrtype == mdns.TypeCNAME || q.Question[0].Qtype == mdns.TypeANY {
					r.Answer = append(r.Answer, rr)
				}
			}
		}
		if opt := q.IsEdns0(); opt != nil {
			r.SetEdns0(opt.UDPSize(), false)
		}
		_ = w.WriteMsg(r)
	})
	// UDP and TCP on one port: retry while the TCP side of a free UDP port
	// is taken.
	var pc net.PacketConn
	var l net.Listener
	var ap netip.AddrPort
	for attempt := 0; ; attempt++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		ap = addrPortOf(pc.LocalAddr())
		if l, err = net.Listen("tcp", ap.String()); err == nil {
			break
		}
		pc.Close()
		if attempt == 20 {
			t.Fatal(err)
		}
	}
	for _, s := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return ap
}

func itoa(i int) string { return netip.AddrFrom4([4]byte{0, 0, 0, byte(i)}).String()[6:] }

// testEndpoints maps every source to endpoint 1 with identity 1000.
type testEndpoints struct{}

func (testEndpoints) Endpoint(netip.Addr) (uint64, uint32, bool) { return 1, 1000, true }

type staticRules struct{ m *Matcher }

func (s staticRules) DNSRules(uint64, netip.AddrPort) (*Matcher, bool) { return s.m, s.m != nil }

// flowLog collects flow records.
type flowLog struct {
	mu   sync.Mutex
	recs []flow.Record
}

func (f *flowLog) Emit(r *flow.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recs = append(f.recs, *r)
}

func (f *flowLog) all() []flow.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.recs)
}

type harness struct {
	p     *Proxy
	ipc   IPCache
	mem   *MemIPCache
	flows *flowLog
	stop  func()
}

type harnessOpts struct {
	cfg    Config
	rules  []policy.PortRuleDNS
	sels   []policy.PortRuleDNS
	ipc    IPCache // default: a MemIPCache
	policy PolicyUpdater
	conns  ConnTracker
	audit  bool // the endpoints are in policy audit mode (audit_test.go)
}

func startProxy(t testing.TB, upstream netip.AddrPort, o harnessOpts) *harness {
	t.Helper()
	m, err := Compile(o.rules)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{mem: &MemIPCache{}, flows: &flowLog{}}
	h.ipc = o.ipc
	if mem, ok := o.ipc.(*MemIPCache); ok {
		h.mem = mem
	}
	if h.ipc == nil {
		h.ipc = h.mem
	}
	cfg := o.cfg
	cfg.UDPAddr, cfg.TCPAddr, cfg.Upstream = "127.0.0.1:0", "127.0.0.1:0", upstream
	if cfg.UpdateTimeout == 0 {
		cfg.UpdateTimeout = 10 * time.Second // generous: noisy CI must never hit it
	}
	var rules RuleSource = staticRules{m}
	if o.audit {
		rules = auditRules{staticRules{m}}
	}
	p, err := New(cfg, Deps{
		Endpoints: testEndpoints{}, Rules: rules, IPCache: h.ipc,
		Identities: &LocalAllocator{}, Policy: o.policy, Conns: o.conns, Flows: h.flows,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetSelectors(o.sels); err != nil {
		t.Fatal(err)
	}
	h.p = p
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v; want nil", err)
		}
	}
	t.Cleanup(func() {
		if ctx.Err() == nil {
			h.stop()
		}
	})
	return h
}

func query(t *testing.T, net string, server netip.AddrPort, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: net, Timeout: 20 * time.Second}
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(1232, false)
	r, _, err := c.Exchange(q, server.String())
	if err != nil {
		t.Fatalf("%s query %s: %v", net, name, err)
	}
	if r.Id != q.Id {
		t.Errorf("answer ID %d; want %d", r.Id, q.Id)
	}
	return r
}

func answerIPs(r *mdns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch a := rr.(type) {
		case *mdns.A:
			out = append(out, a.A.String())
		case *mdns.AAAA:
			out = append(out, a.AAAA.String())
		}
	}
	slices.Sort(out)
	return out
}

var mediabot = []policy.PortRuleDNS{{MatchName: "api.github.test"}, {MatchPattern: "*.github.test"}, {MatchName: "big.github.test"}}

func TestProxyAllowDeny(t *testing.T) {
	up := startUpstream(t)
	tests := []struct {
		name      string
		nxdomain  bool
		qname     string
		wantRcode int
		wantIPs   []string
	}{
		{name: "allowed", qname: "api.github.test.", wantRcode: mdns.RcodeSuccess, wantIPs: []string{"192.0.2.1", "192.0.2.2"}},
		{name: "allowed upper case", qname: "SUPPORT.GitHub.test.", wantRcode: mdns.RcodeSuccess, wantIPs: []string{"192.0.2.3"}},
		{name: "pattern does not match bare domain", qname: "github.test.", wantRcode: mdns.RcodeRefused},
		{name: "other name refused", qname: "evil.test.", wantRcode: mdns.RcodeRefused},
		{name: "nxdomain option", nxdomain: true, qname: "evil.test.", wantRcode: mdns.RcodeNameError},
		{name: "allowed but nonexistent", qname: "nope.github.test.", wantRcode: mdns.RcodeNameError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startProxy(t, up, harnessOpts{cfg: Config{RejectNXDomain: tt.nxdomain}, rules: mediabot})
			for _, network := range []string{"udp", "tcp"} {
				addr := h.p.UDPAddr()
				if network == "tcp" {
					addr = h.p.TCPAddr()
				}
				r := query(t, network, addr, tt.qname, mdns.TypeA)
				if r.Rcode != tt.wantRcode {
					t.Errorf("%s %s rcode = %s; want %s", network, tt.qname, mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tt.wantRcode])
				}
				if got := answerIPs(r); !slices.Equal(got, tt.wantIPs) {
					t.Errorf("%s %s IPs = %v; want %v", network, tt.qname, got, tt.wantIPs)
				}
				if r.IsEdns0() == nil {
					t.Errorf("%s %s: answer lost EDNS", network, tt.qname)
				}
			}
			recs := h.flows.all()
			if len(recs) != 2 {
				t.Fatalf("flow records = %d; want 2", len(recs))
			}
			for _, rec := range recs {
				if rec.DNS == nil || rec.DNS.Query != mdns.Fqdn(tt.qname) || rec.DNS.RCode != mdns.RcodeToString[tt.wantRcode] {
					t.Errorf("flow record %+v %+v; want query %s rcode %s", rec, rec.DNS, tt.qname, mdns.RcodeToString[tt.wantRcode])
				}
				wantVerdict := flow.Allowed
				if tt.wantRcode == mdns.RcodeRefused || tt.nxdomain {
					wantVerdict = flow.Denied
				}
				if rec.Verdict != wantVerdict {
					t.Errorf("flow verdict = %s; want %s", rec.Verdict, wantVerdict)
				}
			}
		})
	}
}

func TestProxyTruncationAndTCPFallback(t *testing.T) {
	up := startUpstream(t)
	h := startProxy(t, up, harnessOpts{rules: mediabot})
	c := &mdns.Client{Net: "udp", Timeout: 20 * time.Second}
	q := new(mdns.Msg)
	q.SetQuestion("big.github.test.", mdns.TypeA)
	r, _, err := c.Exchange(q, h.p.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated {
		t.Errorf("UDP answer TC = false; want the upstream's truncation preserved")
	}
	r = query(t, "tcp", h.p.TCPAddr(), "big.github.test.", mdns.TypeA)
	if n := len(answerIPs(r)); n != 60 {
		t.Errorf("TCP answer has %d IPs; want 60", n)
	}
}

func TestProxyMismatchedAnswerNotCached(t *testing.T) {
	up := startUpstream(t)
	h := startProxy(t, up, harnessOpts{rules: []policy.PortRuleDNS{{MatchPattern: "*"}}, sels: []policy.PortRuleDNS{{MatchPattern: "*"}}})
	r := query(t, "udp", h.p.UDPAddr(), "mismatch.github.test.", mdns.TypeA)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("rcode = %s; want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
	if n := len(h.p.Cache().Entries()); n != 0 {
		t.Errorf("cache has %d entries; want 0", n)
	}
}

func TestProxyCNAMEChain(t *testing.T) {
	up := startUpstream(t)
	h := startProxy(t, up, harnessOpts{rules: mediabot, sels: []policy.PortRuleDNS{{MatchName: "www.github.test"}}})
	query(t, "udp", h.p.UDPAddr(), "www.github.test.", mdns.TypeA)
	es := h.p.Cache().Entries()
	if len(es) != 1 || es[0].Name != "www.github.test" || es[0].IP != netip.MustParseAddr("192.0.2.5") {
		t.Fatalf("cache = %+v; want www.github.test → 192.0.2.5 only", es)
	}
	if ttl := time.Until(es[0].Expires); ttl > 21*time.Second || ttl < 10*time.Second {
		t.Errorf("TTL left %v; want the chain's lowest (20s)", ttl)
	}
	if _, ok := h.mem.Lookup(netip.MustParseAddr("192.0.2.5")); !ok {
		t.Errorf("ipcache has no entry for 192.0.2.5")
	}
	if _, ok := h.mem.Lookup(netip.MustParseAddr("198.51.100.66")); ok {
		t.Errorf("ipcache has an entry for an off-chain record")
	}
}

// slowIPCache takes delay to make an Upsert visible, like a datapath whose
// map update lags.
type slowIPCache struct {
	MemIPCache
	delay time.Duration
	block chan struct{} // when set, Upsert waits for it to be closed
}

func (s *slowIPCache) Upsert(p netip.Prefix, id uint32) error {
	if s.block != nil {
		<-s.block
	}
	time.Sleep(s.delay)
	return s.MemIPCache.Upsert(p, id)
}

// recordingPolicy records the identities Apply was asked for.
type recordingPolicy struct {
	mu  sync.Mutex
	ids map[uint32]bool
}

func (r *recordingPolicy) Apply(_ context.Context, ids []uint32) error {
	time.Sleep(20 * time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = make(map[uint32]bool)
	}
	for _, id := range ids {
		r.ids[id] = true
	}
	return nil
}

func (r *recordingPolicy) has(id uint32) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

// TestAnswerReleasedAfterIPCacheUpdate is the DNS-before-connect guarantee:
// the instant the client has the answer, the IPs are in the ipcache with
// their identity, and the policy for that identity is in place. Without the
// wait in Proxy.learn this fails: the slow Upsert lands 50 ms later.
func TestAnswerReleasedAfterIPCacheUpdate(t *testing.T) {
	up := startUpstream(t)
	ipc := &slowIPCache{delay: 50 * time.Millisecond}
	pol := &recordingPolicy{}
	h := startProxy(t, up, harnessOpts{
		rules: mediabot, ipc: ipc, policy: pol,
		sels: []policy.PortRuleDNS{{MatchName: "api.github.test"}, {MatchPattern: "*.github.test"}},
	})
	for _, network := range []string{"udp", "tcp"} {
		addr := h.p.UDPAddr()
		if network == "tcp" {
			addr = h.p.TCPAddr()
		}
		for _, name := range []string{"api.github.test.", "support.github.test.", "v6.github.test."} {
			qtype := mdns.TypeA
			if name == "v6.github.test." {
				qtype = mdns.TypeAAAA
			}
			r := query(t, network, addr, name, qtype)
			ips := answerIPs(r)
			if len(ips) == 0 {
				t.Fatalf("%s %s: no IPs", network, name)
			}
			for _, s := range ips {
				id, ok := ipc.Lookup(netip.MustParseAddr(s))
				if !ok {
					t.Fatalf("%s %s: %s not in the ipcache when the answer arrived", network, name, s)
				}
				if id < MinFQDNIdentity {
					t.Errorf("%s: identity %d below the FQDN range", s, id)
				}
				if !pol.has(id) {
					t.Errorf("%s: policy for identity %d not applied when the answer arrived", s, id)
				}
			}
		}
	}
	// api.github.test matches both selectors, support.github.test one:
	// two identities, shared by IPs with the same selector set.
	a, _ := ipc.Lookup(netip.MustParseAddr("192.0.2.1"))
	b, _ := ipc.Lookup(netip.MustParseAddr("192.0.2.2"))
	c, _ := ipc.Lookup(netip.MustParseAddr("192.0.2.3"))
	if a != b || a == c {
		t.Errorf("identities %d %d %d; want the first two equal and the third different", a, b, c)
	}
	if _, sels, _ := h.p.Identity(netip.MustParseAddr("192.0.2.1")); !slices.Equal(sels, []string{"matchName:api.github.test", "matchPattern:*.github.test"}) {
		t.Errorf("selectors of 192.0.2.1 = %v", sels)
	}
	if n := h.p.Stats().UpdateTimeouts.Load(); n != 0 {
		t.Errorf("UpdateTimeouts = %d; want 0", n)
	}
}

func TestUpdateTimeoutReleasesAnswer(t *testing.T) {
	up := startUpstream(t)
	ipc := &slowIPCache{block: make(chan struct{})}
	h := startProxy(t, up, harnessOpts{
		cfg:   Config{UpdateTimeout: 20 * time.Millisecond},
		rules: mediabot, ipc: ipc, sels: mediabot,
	})
	r := query(t, "udp", h.p.UDPAddr(), "api.github.test.", mdns.TypeA)
	if len(r.Answer) == 0 {
		t.Fatalf("no answer records")
	}
	if n := h.p.Stats().UpdateTimeouts.Load(); n != 1 {
		t.Errorf("UpdateTimeouts = %d; want 1", n)
	}
	close(ipc.block)
}

// fakeConns says every IP in the set is in use.
type fakeConns struct {
	mu  sync.Mutex
	ips map[netip.Addr]bool
}

func (f *fakeConns) InUse(_ uint64, ip netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ips[ip]
}

func (f *fakeConns) set(ip netip.Addr, v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ips[ip] = v
}

func TestExpiryZombiesAndPersistence(t *testing.T) {
	up := startUpstream(t)
	state := filepath.Join(t.TempDir(), "fqdn.json")
	conns := &fakeConns{ips: map[netip.Addr]bool{}}
	kept := netip.MustParseAddr("192.0.2.1")
	conns.set(kept, true)
	h := startProxy(t, up, harnessOpts{
		cfg:   Config{GCInterval: 20 * time.Millisecond, StateFile: state},
		rules: mediabot, sels: mediabot, conns: conns,
	})
	query(t, "udp", h.p.UDPAddr(), "api.github.test.", mdns.TypeA)
	query(t, "udp", h.p.UDPAddr(), "support.github.test.", mdns.TypeA)
	h.stop()

	st, err := ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Entries) != 3 || len(st.IPs) != 3 {
		t.Fatalf("state has %d entries and %d ipcache IPs; want 3 and 3", len(st.Entries), len(st.IPs))
	}
	// Make every entry expired, as after a long restart.
	for i := range st.Entries {
		st.Entries[i].Expires = time.Now().Add(-time.Second)
	}
	// An ipcache entry the previous run wrote for an IP no longer cached
	// (BPF maps outlive the agent): the restart removes it.
	stale := netip.MustParseAddr("198.51.100.99")
	st.IPs = append(st.IPs, IPState{IP: stale, Identity: MinFQDNIdentity + 7, Selectors: []string{"matchName:gone.test"}})
	if err := WriteState(state, st); err != nil {
		t.Fatal(err)
	}
	mem := &MemIPCache{}
	if err := mem.Upsert(netip.PrefixFrom(stale, 32), MinFQDNIdentity+7); err != nil {
		t.Fatal(err)
	}
	h2 := startProxy(t, up, harnessOpts{
		cfg:   Config{GCInterval: 20 * time.Millisecond, StateFile: state},
		rules: mediabot, sels: mediabot, conns: conns, ipc: mem,
	})
	waitFor(t, "stale ipcache entry removed", func() bool {
		_, ok := h2.mem.Lookup(stale)
		return !ok
	})
	// The IP a connection uses stays (a zombie); the others go at the
	// first GC.
	gone := netip.MustParseAddr("192.0.2.3")
	waitFor(t, "unused IPs collected, the used one kept", func() bool {
		_, goneOK := h2.mem.Lookup(gone)
		_, keptOK := h2.mem.Lookup(kept)
		return len(h2.p.Cache().Entries()) == 1 && !goneOK && keptOK
	})
	if z := h2.p.Cache().Zombies(); z != 1 {
		t.Errorf("zombies = %d; want 1", z)
	}
	conns.set(kept, false)
	waitFor(t, "zombie removed once its connection ended", func() bool {
		_, ok := h2.mem.Lookup(kept)
		return !ok
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
