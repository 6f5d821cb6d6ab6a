package dns

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/policy"
)

// BenchmarkProxyUDP measures one query's round trip through the proxy to a
// loopback upstream, over one client socket.
func BenchmarkProxyUDP(b *testing.B) {
	for _, bc := range []struct {
		name  string
		rules []policy.PortRuleDNS
		sels  []policy.PortRuleDNS
	}{
		{name: "allow-all", rules: []policy.PortRuleDNS{{MatchPattern: "*"}}},
		{name: "mediabot+toFQDNs", rules: mediabot, sels: mediabot},
	} {
		b.Run(bc.name, func(b *testing.B) {
			up := startUpstream(b)
			h := startProxy(b, up, harnessOpts{rules: bc.rules, sels: bc.sels})
			c, err := net.Dial("udp", h.p.UDPAddr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			q := new(mdns.Msg)
			q.SetQuestion("api.github.test.", mdns.TypeA)
			pkt, err := q.Pack()
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 4096)
			b.ReportAllocs()
			var id uint16
			for b.Loop() {
				id++
				binary.BigEndian.PutUint16(pkt, id)
				if _, err := c.Write(pkt); err != nil {
					b.Fatal(err)
				}
				if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLearnRotating measures the update-before-release step alone: an
// answer with a fresh IP, the FQDN cache, identity, ipcache (in memory) and
// the release. It reports the p99 of the wait.
func BenchmarkLearnRotating(b *testing.B) {
	up := startUpstream(b)
	h := startProxy(b, up, harnessOpts{rules: mediabot, sels: mediabot})
	b.ReportAllocs()
	var n uint32
	for b.Loop() {
		n++
		var ip [4]byte
		binary.BigEndian.PutUint32(ip[:], 10<<24|n&0xffffff)
		h.p.learn(context.Background(), 1, "api.github.test.", []netip.Addr{netip.AddrFrom4(ip)}, 60)
	}
	b.ReportMetric(float64(h.p.Stats().UpdateWait.Quantile(0.99).Microseconds()), "p99-wait-µs")
	if n := h.p.Stats().UpdateTimeouts.Load(); n != 0 {
		b.Errorf("UpdateTimeouts = %d", n)
	}
}

// BenchmarkAllow100Patterns is the rule check of a port with 100
// matchPattern rules, the matching one last.
func BenchmarkAllow100Patterns(b *testing.B) {
	var rs []policy.PortRuleDNS
	for i := range 99 {
		rs = append(rs, policy.PortRuleDNS{MatchPattern: "*.svc" + itoa(i) + ".example.test"})
	}
	rs = append(rs, policy.PortRuleDNS{MatchPattern: "*.github.test"})
	m, err := Compile(rs)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !m.Allow("api.github.test.") {
			b.Fatal("not allowed")
		}
	}
}
