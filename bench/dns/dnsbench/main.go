// Command dnsbench runs the servers bench/dns/run.sh measures with dnsperf:
// a minimal miekg/dns forwarder without policy (the baseline), ward's DNS
// proxy (non-transparent, fixed upstream) with a chosen rule set, and a
// rotating authoritative server whose every answer carries a fresh IP (so
// every answer through ward is an ipcache update).
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"

	dnsproxy "github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/policy"
)

func main() {
	mode := flag.String("mode", "ward", "forwarder | ward | rotating | freeport")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (UDP and TCP)")
	upstream := flag.String("upstream", "", "upstream resolver (forwarder, ward)")
	patterns := flag.Int("patterns", 0, "ward: number of matchPattern rules (0 = allow all with \"*\")")
	selectors := flag.Bool("selectors", false, "ward: a toFQDNs selector matching the benchmark names")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch *mode {
	case "forwarder":
		err = forwarder(ctx, *listen, *upstream)
	case "ward":
		err = ward(ctx, *listen, *upstream, *patterns, *selectors)
	case "rotating":
		err = rotating(ctx, *listen)
	case "freeport":
		err = freePort()
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsbench:", err)
		os.Exit(1)
	}
}

func serve(ctx context.Context, listen string, h mdns.Handler) error {
	udp := &mdns.Server{Addr: listen, Net: "udp", Handler: h}
	tcp := &mdns.Server{Addr: listen, Net: "tcp", Handler: h}
	errc := make(chan error, 2)
	go func() { errc <- udp.ListenAndServe() }()
	go func() { errc <- tcp.ListenAndServe() }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	_ = udp.Shutdown()
	_ = tcp.Shutdown()
	return nil
}

// forwarder is the baseline: forward each query 1:1 (a new upstream socket
// per query, as ward and Cilium do), no policy.
func forwarder(ctx context.Context, listen, upstream string) error {
	c := &mdns.Client{Net: "udp", Timeout: 5 * time.Second}
	tc := &mdns.Client{Net: "tcp", Timeout: 5 * time.Second}
	return serve(ctx, listen, mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) {
		cl := c
		if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
			cl = tc
		}
		r, _, err := cl.Exchange(q, upstream)
		if err != nil {
			m := new(mdns.Msg)
			m.SetRcode(q, mdns.RcodeServerFailure)
			_ = w.WriteMsg(m)
			return
		}
		_ = w.WriteMsg(r)
	}))
}

// rotating answers every A query with one fresh IP (10.0.0.0/8, counting),
// TTL 60.
func rotating(ctx context.Context, listen string) error {
	var n atomic.Uint32
	return serve(ctx, listen, mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) {
		r := new(mdns.Msg)
		r.SetReply(q)
		r.Authoritative = true
		if len(q.Question) == 1 && q.Question[0].Qtype == mdns.TypeA {
			var ip [4]byte
			binary.BigEndian.PutUint32(ip[:], 10<<24|n.Add(1)&0xffffff)
			r.Answer = append(r.Answer, &mdns.A{
				Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60},
				A:   ip[:],
			})
		}
		_ = w.WriteMsg(r)
	}))
}

// freePort prints a loopback port free for both UDP and TCP a moment ago.
func freePort() error {
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err != nil {
			continue
		}
		l.Close()
		fmt.Println(port)
		return nil
	}
	return fmt.Errorf("no free port")
}

type allEndpoints struct{}

func (allEndpoints) Endpoint(netip.Addr) (uint64, uint32, bool) { return 1, 1000, true }

type rules struct{ m *dnsproxy.Matcher }

func (r rules) DNSRules(uint64, netip.AddrPort) (*dnsproxy.Matcher, bool) { return r.m, true }

func ward(ctx context.Context, listen, upstream string, patterns int, selectors bool) error {
	up, err := netip.ParseAddrPort(upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	var rs []policy.PortRuleDNS
	if patterns == 0 {
		rs = []policy.PortRuleDNS{{MatchPattern: "*"}}
	}
	for i := range patterns - 1 {
		rs = append(rs, policy.PortRuleDNS{MatchPattern: fmt.Sprintf("*.svc%d.example-%d.test", i, i)})
	}
	if patterns > 0 {
		rs = append(rs, policy.PortRuleDNS{MatchPattern: "*.github.test"}) // the one that matches, last
	}
	m, err := dnsproxy.Compile(rs)
	if err != nil {
		return err
	}
	ipc := &dnsproxy.MemIPCache{}
	p, err := dnsproxy.New(dnsproxy.Config{UDPAddr: listen, TCPAddr: listen, Upstream: up}, dnsproxy.Deps{
		Endpoints: allEndpoints{}, Rules: rules{m}, IPCache: ipc, Identities: &dnsproxy.LocalAllocator{},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return err
	}
	if selectors {
		if err := p.SetSelectors([]policy.PortRuleDNS{{MatchPattern: "*.github.test"}}); err != nil {
			return err
		}
	}
	err = p.Run(ctx)
	s := p.Stats()
	fmt.Fprintf(os.Stderr, "ward-stats queries=%d allowed=%d denied=%d upstream_errors=%d overload=%d update_timeouts=%d ipcache_upserts=%d ipcache_entries=%d update_wait_p50_us=%d update_wait_p99_us=%d\n",
		s.Queries.Load(), s.Allowed.Load(), s.Denied.Load(), s.UpstreamErrors.Load(), s.Overload.Load(), s.UpdateTimeouts.Load(),
		s.IPCacheUpserts.Load(), ipc.Len(), s.UpdateWait.Quantile(0.5).Microseconds(), s.UpdateWait.Quantile(0.99).Microseconds())
	return err
}
