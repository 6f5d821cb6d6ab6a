package dns

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/policy"
)

// newIdleProxy returns a proxy that is never run, with rules that allow
// nothing: handle() decides without touching the network.
func newIdleProxy(t testing.TB) *Proxy {
	t.Helper()
	m, err := Compile([]policy.PortRuleDNS{{MatchName: "allowed.test"}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{UDPAddr: "127.0.0.1:0", Upstream: netip.MustParseAddrPort("127.0.0.1:9")}, Deps{
		Endpoints: testEndpoints{}, Rules: staticRules{m}, IPCache: &MemIPCache{}, Identities: &LocalAllocator{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func header(id uint16, flags uint16, qd, an uint16) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint16(b[4:], qd)
	binary.BigEndian.PutUint16(b[6:], an)
	return b
}

func TestBadQueries(t *testing.T) {
	p := newIdleProxy(t)
	q2 := new(mdns.Msg)
	q2.SetQuestion("a.test.", mdns.TypeA)
	q2.Question = append(q2.Question, mdns.Question{Name: "b.test.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET})
	many, err := q2.Pack()
	if err != nil {
		t.Fatal(err)
	}
	update := new(mdns.Msg)
	update.SetUpdate("allowed.test.")
	upd, err := update.Pack()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		pkt       []byte
		wantRcode int // -1: no answer
	}{
		{name: "empty", pkt: nil, wantRcode: -1},
		{name: "short header", pkt: []byte{1, 2, 3}, wantRcode: -1},
		{name: "header claims a question it lacks", pkt: header(7, 0x0100, 1, 0), wantRcode: mdns.RcodeFormatError},
		{name: "compression loop", pkt: append(header(7, 0x0100, 1, 0), 0xc0, 12, 0, 1, 0, 1), wantRcode: mdns.RcodeFormatError},
		{name: "pointer forward", pkt: append(header(7, 0x0100, 1, 0), 0xc0, 40, 0, 1, 0, 1), wantRcode: mdns.RcodeFormatError},
		{name: "zero questions", pkt: header(7, 0x0100, 0, 0), wantRcode: mdns.RcodeFormatError},
		{name: "two questions", pkt: many, wantRcode: mdns.RcodeFormatError},
		{name: "a response, not a query", pkt: header(7, 0x8100, 0, 0), wantRcode: -1},
		{name: "dynamic update", pkt: upd, wantRcode: mdns.RcodeNotImplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := p.handle(context.Background(), tt.pkt, netip.MustParseAddrPort("127.0.0.1:5000"), p.UDPAddr(), "UDP")
			if tt.wantRcode < 0 {
				if resp != nil {
					t.Fatalf("handle(%x) = %x; want no answer", tt.pkt, resp)
				}
				return
			}
			if len(resp) < 12 {
				t.Fatalf("handle(%x) = %x; want an answer", tt.pkt, resp)
			}
			if id := binary.BigEndian.Uint16(resp); len(tt.pkt) >= 2 && id != binary.BigEndian.Uint16(tt.pkt) {
				t.Errorf("answer ID %d; want the query's", id)
			}
			if resp[2]&0x80 == 0 {
				t.Errorf("answer QR bit not set")
			}
			if rc := int(resp[3] & 0x0f); rc != tt.wantRcode {
				t.Errorf("rcode = %s; want %s", mdns.RcodeToString[rc], mdns.RcodeToString[tt.wantRcode])
			}
		})
	}
	if n := len(p.Cache().Entries()); n != 0 {
		t.Errorf("cache has %d entries; want 0", n)
	}
}

func TestCheckAnswer(t *testing.T) {
	q := mdns.Question{Name: "api.github.test.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}
	mk := func(f func(r *mdns.Msg)) []byte {
		r := new(mdns.Msg)
		r.Id = 9
		r.Response = true
		r.Question = []mdns.Question{q}
		f(r)
		b, err := r.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name string
		resp []byte
		ok   bool
	}{
		{name: "matching", resp: mk(func(*mdns.Msg) {}), ok: true},
		{name: "case differs", resp: mk(func(r *mdns.Msg) { r.Question[0].Name = "API.github.test." }), ok: true},
		{name: "other name", resp: mk(func(r *mdns.Msg) { r.Question[0].Name = "evil.test." }), ok: false},
		{name: "other type", resp: mk(func(r *mdns.Msg) { r.Question[0].Qtype = mdns.TypeAAAA }), ok: false},
		{name: "no question", resp: mk(func(r *mdns.Msg) { r.Question = nil }), ok: false},
		{name: "not a response", resp: mk(func(r *mdns.Msg) { r.Response = false }), ok: false},
		{name: "truncated bytes", resp: mk(func(*mdns.Msg) {})[:14], ok: false},
		{name: "garbage", resp: []byte("not dns at all"), ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := checkAnswer(q, tt.resp)
			if (err == nil) != tt.ok {
				t.Errorf("checkAnswer = %v; want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestExtractIPs(t *testing.T) {
	rrs := func(ss ...string) *mdns.Msg {
		m := new(mdns.Msg)
		for _, s := range ss {
			rr, err := mdns.NewRR(s)
			if err != nil {
				t.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		return m
	}
	tests := []struct {
		name    string
		msg     *mdns.Msg
		want    []string
		wantTTL uint32
	}{
		{name: "plain", msg: rrs("a.test. 60 IN A 192.0.2.1", "a.test. 30 IN AAAA 2001:db8::1"), want: []string{"192.0.2.1", "2001:db8::1"}, wantTTL: 30},
		{name: "chain lowest ttl", msg: rrs("a.test. 10 IN CNAME b.test.", "b.test. 60 IN A 192.0.2.2"), want: []string{"192.0.2.2"}, wantTTL: 10},
		{name: "owner off the chain", msg: rrs("evil.test. 60 IN A 192.0.2.9"), want: nil},
		{name: "cname loop", msg: rrs("a.test. 60 IN CNAME b.test.", "b.test. 60 IN CNAME a.test.", "a.test. 60 IN A 192.0.2.3"), want: nil},
		{name: "self cname", msg: rrs("a.test. 60 IN CNAME a.test.", "a.test. 5 IN A 192.0.2.4"), want: nil},
		{name: "case-insensitive owner", msg: rrs("A.TEST. 60 IN A 192.0.2.5"), want: []string{"192.0.2.5"}, wantTTL: 60},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ips, ttl := extractIPs(tt.msg, "a.test.")
			var got []string
			for _, ip := range ips {
				got = append(got, ip.String())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("extractIPs = %v; want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("extractIPs = %v; want %v", got, tt.want)
				}
			}
			if len(got) > 0 && ttl != tt.wantTTL {
				t.Errorf("ttl = %d; want %d", ttl, tt.wantTTL)
			}
		})
	}
}

func TestCacheCapsAndTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewCache(Config{MinTTL: 5 * time.Second, MaxIPsPerName: 3, MaxZombies: 2})
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	for i := 1; i <= 5; i++ {
		c.Update(1, "s3.test.", []netip.Addr{ip(i)}, time.Second, now.Add(time.Duration(i)*time.Second))
	}
	at := now.Add(5 * time.Second)
	if got := c.Lookup(1, "S3.test", at); len(got) != 3 || got[0] != ip(3) {
		t.Errorf("Lookup = %v; want the 3 newest (10.0.0.3-5)", got)
	}
	if z := c.Zombies(); z != 2 {
		t.Errorf("zombies = %d; want 2 (the evicted oldest)", z)
	}
	// Min TTL: a 1 s answer lives 5 s.
	if got := c.Lookup(1, "s3.test", now.Add(9*time.Second)); len(got) != 1 || got[0] != ip(5) {
		t.Errorf("Lookup at +9s = %v; want 10.0.0.5 (min TTL 5s)", got)
	}
	// A new lookup revives a zombie.
	c.Update(1, "s3.test", []netip.Addr{ip(1)}, time.Minute, now.Add(6*time.Second))
	if z := c.Zombies(); z != 2 { // 10.0.0.1 revived, 10.0.0.3 evicted in its place
		t.Errorf("zombies after revive = %d; want 2", z)
	}
	// Everything expires; with no connection alive, Reap removes all.
	zs := c.Expire(now.Add(time.Hour))
	if len(zs) != c.Zombies() {
		t.Errorf("Expire returned %d zombies; cache counts %d", len(zs), c.Zombies())
	}
	alive := map[ZombieRef]bool{}
	for _, z := range zs {
		alive[z] = true
	}
	changed := c.Reap(alive)
	if c.Zombies() != 2 || len(changed) == 0 {
		t.Errorf("after reap with all alive: zombies = %d (want the cap, 2), changed = %v", c.Zombies(), changed)
	}
	c.Reap(nil)
	if n := len(c.Entries()); n != 0 || len(c.IPs()) != 0 {
		t.Errorf("after reap: %d entries, %d IPs; want none", n, len(c.IPs()))
	}
}

func FuzzHandleQuery(f *testing.F) {
	q := new(mdns.Msg)
	q.SetQuestion("allowed.test.", mdns.TypeA)
	q.SetEdns0(1232, true)
	b, _ := q.Pack()
	f.Add(b)
	f.Add(append(header(7, 0x0100, 1, 0), 0xc0, 12, 0, 1, 0, 1))
	f.Add(header(1, 0, 0, 0))
	p := newIdleProxy(f)
	from := netip.MustParseAddrPort("127.0.0.1:5000")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var m mdns.Msg
		if m.Unpack(pkt) == nil && len(m.Question) == 1 && p.deps.Rules.(staticRules).m.Allow(m.Question[0].Name) && !m.Response && m.Opcode == mdns.OpcodeQuery {
			return // would be forwarded: not this fuzzer's business
		}
		resp := p.handle(context.Background(), pkt, from, p.UDPAddr(), "UDP")
		if resp == nil {
			return
		}
		var r mdns.Msg
		if err := r.Unpack(resp); err != nil {
			t.Fatalf("answer %x does not parse: %v", resp, err)
		}
		if !r.Response || r.Id != binary.BigEndian.Uint16(pkt) {
			t.Fatalf("answer %+v is not a response with the query's ID", r.MsgHdr)
		}
	})
}

func FuzzCheckAnswer(f *testing.F) {
	r := new(mdns.Msg)
	r.SetQuestion("a.test.", mdns.TypeA)
	r.Response = true
	rr, _ := mdns.NewRR("a.test. 60 IN CNAME b.test.")
	rr2, _ := mdns.NewRR("b.test. 30 IN A 192.0.2.1")
	r.Answer = append(r.Answer, rr, rr2)
	b, _ := r.Pack()
	f.Add(b)
	q := mdns.Question{Name: "a.test.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}
	f.Fuzz(func(t *testing.T, resp []byte) {
		m, err := checkAnswer(q, resp)
		if err != nil {
			return
		}
		ips, _ := extractIPs(m, q.Name)
		c := NewCache(Config{})
		c.Update(1, q.Name, ips, time.Minute, time.Now())
		for _, ip := range ips {
			if !ip.IsValid() {
				t.Fatalf("invalid IP extracted from %x", resp)
			}
		}
	})
}

// TestSharedWildcardIsDualStack: UDP and TCP sharing the dual-stack
// wildcard ":0" (the agent's transparent DNS proxy) get one port on which
// TCP accepts IPv4 as well as IPv6 (the bound "[::]" address once made the
// TCP socket IPv6-only, and IPv4 TCP queries timed out).
func TestSharedWildcardIsDualStack(t *testing.T) {
	p, err := New(Config{UDPAddr: ":0", TCPAddr: ":0", Upstream: netip.MustParseAddrPort("127.0.0.1:9")}, Deps{
		Endpoints: testEndpoints{}, Rules: staticRules{}, IPCache: &MemIPCache{}, Identities: &LocalAllocator{},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.TCPAddr().Port() != p.UDPAddr().Port() {
		t.Fatalf("tcp port %d, udp port %d; want one port", p.TCPAddr().Port(), p.UDPAddr().Port())
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(int(p.TCPAddr().Port()))), 5*time.Second)
		if err != nil {
			t.Errorf("dial tcp %s: %v; want the shared TCP listener to accept it", host, err)
			continue
		}
		c.Close()
	}
}
