package dns

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy"
)

// rawUpstream is a UDP upstream under the test's control: for every query
// it calls answer, which returns the datagrams to send back.
func rawUpstream(t *testing.T, answer func(q *mdns.Msg) []*mdns.Msg) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(mdns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			for _, r := range answer(q) {
				b, err := r.Pack()
				if err != nil {
					continue
				}
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
	return addrPortOf(pc.LocalAddr())
}

func aAnswer(q *mdns.Msg, ip string) *mdns.Msg {
	r := new(mdns.Msg)
	r.SetReply(q)
	rr, _ := mdns.NewRR(q.Question[0].Name + " 60 IN A " + ip)
	r.Answer = append(r.Answer, rr)
	return r
}

func TestForgedIDIgnored(t *testing.T) {
	up := rawUpstream(t, func(q *mdns.Msg) []*mdns.Msg {
		forged := aAnswer(q, "203.0.113.66")
		forged.Id = q.Id + 1 // an off-path guess
		return []*mdns.Msg{forged, aAnswer(q, "192.0.2.1")}
	})
	h := startProxy(t, up, harnessOpts{rules: mediabot, sels: mediabot})
	r := query(t, "udp", h.p.UDPAddr(), "api.github.test.", mdns.TypeA)
	if got := answerIPs(r); len(got) != 1 || got[0] != "192.0.2.1" {
		t.Fatalf("answer IPs %v; want [192.0.2.1] (the forged answer ignored)", got)
	}
	if _, ok := h.mem.Lookup(netip.MustParseAddr("203.0.113.66")); ok {
		t.Errorf("forged IP reached the ipcache")
	}
}

func TestUpstreamTimeoutIsSilentOverUDP(t *testing.T) {
	up := rawUpstream(t, func(*mdns.Msg) []*mdns.Msg { return nil })
	h := startProxy(t, up, harnessOpts{cfg: Config{ForwardTimeout: 200 * time.Millisecond}, rules: mediabot})
	c := &mdns.Client{Net: "udp", Timeout: 2 * time.Second}
	q := new(mdns.Msg)
	q.SetQuestion("api.github.test.", mdns.TypeA)
	if r, _, err := c.Exchange(q, h.p.UDPAddr().String()); err == nil {
		t.Fatalf("got answer %v; want silence (the client retries)", r)
	}
	waitFor(t, "upstream error counted", func() bool { return h.p.Stats().UpstreamErrors.Load() == 1 })
}

func TestManyInFlightFromOneSocket(t *testing.T) {
	up := startUpstream(t)
	h := startProxy(t, up, harnessOpts{rules: mediabot, sels: mediabot})
	c, err := net.Dial("udp", h.p.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 200
	for i := range n {
		q := new(mdns.Msg)
		q.SetQuestion("api.github.test.", mdns.TypeA)
		q.Id = uint16(i + 1)
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint16]bool{}
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for len(seen) < n {
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d answers: %v", len(seen), err)
		}
		seen[binary.BigEndian.Uint16(buf[:m])] = true
	}
	for i := range n {
		if !seen[uint16(i+1)] {
			t.Errorf("no answer for ID %d", i+1)
		}
	}
}

func TestTCPPipeliningAndBadFrames(t *testing.T) {
	up := startUpstream(t)
	h := startProxy(t, up, harnessOpts{rules: []policy.PortRuleDNS{{MatchPattern: "*"}}})
	c, err := net.Dial("tcp", h.p.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Two queries in one write: both answered, each with its ID.
	var out []byte
	for i, name := range []string{"api.github.test.", "support.github.test."} {
		q := new(mdns.Msg)
		q.SetQuestion(name, mdns.TypeA)
		q.Id = uint16(100 + i)
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	ids := map[uint16]bool{}
	for range 2 {
		var hdr [2]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		ids[binary.BigEndian.Uint16(b)] = true
	}
	if !ids[100] || !ids[101] {
		t.Errorf("answered IDs %v; want 100 and 101", ids)
	}
	// A frame too short for a header: the connection is closed.
	if _, err := c.Write([]byte{0, 3, 1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 10)); err == nil {
		t.Errorf("connection still open after a 3-byte frame")
	}
}

// TestConcurrentAnswersSeeTheirIPs: many clients resolve one name whose
// answers cycle through a few IPs, so answers sharing an IP race each other
// through the update; every client must find its IP in the (slow) ipcache
// the moment it has the answer.
func TestConcurrentAnswersSeeTheirIPs(t *testing.T) {
	var mu sync.Mutex
	n := 0
	up := rawUpstream(t, func(q *mdns.Msg) []*mdns.Msg {
		mu.Lock()
		n++
		ip := "192.0.2." + itoa(n%5+1)
		mu.Unlock()
		return []*mdns.Msg{aAnswer(q, ip)}
	})
	ipc := &slowIPCache{delay: 5 * time.Millisecond}
	h := startProxy(t, up, harnessOpts{rules: mediabot, sels: mediabot, ipc: ipc})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			c := &mdns.Client{Net: "udp", Timeout: 20 * time.Second} // the raw upstream is UDP only
			for range 10 {
				q := new(mdns.Msg)
				q.SetQuestion("api.github.test.", mdns.TypeA)
				r, _, err := c.Exchange(q, h.p.UDPAddr().String())
				if err != nil || r.Rcode != mdns.RcodeSuccess {
					t.Errorf("exchange: %v %v", r, err)
					return
				}
				for _, s := range answerIPs(r) {
					if _, ok := ipc.Lookup(netip.MustParseAddr(s)); !ok {
						t.Errorf("%s not in the ipcache when its answer arrived", s)
					}
				}
			}
		})
	}
	wg.Wait()
	if n := h.p.Stats().UpdateTimeouts.Load(); n != 0 {
		t.Errorf("UpdateTimeouts = %d", n)
	}
}

func TestTransparentQueryToTheProxyItselfRefused(t *testing.T) {
	testenv.RequireRoot(t) // IP_TRANSPARENT needs CAP_NET_ADMIN
	m, err := Compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{UDPAddr: "127.0.0.1:0", Transparent: true}, Deps{
		Endpoints: testEndpoints{}, Rules: staticRules{m}, IPCache: &MemIPCache{}, Identities: &LocalAllocator{},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	q := new(mdns.Msg)
	q.SetQuestion("api.github.test.", mdns.TypeA)
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	resp := p.handle(context.Background(), b, netip.MustParseAddrPort("127.0.0.1:5000"), p.UDPAddr(), "UDP")
	var r mdns.Msg
	if err := r.Unpack(resp); err != nil || r.Rcode != mdns.RcodeRefused {
		t.Fatalf("answer %v, %v; want REFUSED instead of a forwarding loop", r.MsgHdr, err)
	}
}
