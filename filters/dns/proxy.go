package dns

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
)

// EndpointLookup identifies the local endpoint (pod) sending a query by its
// source IP. Safe for concurrent use.
type EndpointLookup interface {
	Endpoint(src netip.Addr) (id uint64, identity uint32, ok bool)
}

// RuleSource gives an endpoint's compiled DNS rules for a query's original
// destination (server IP and port; the server's identity can be checked by
// the implementation). ok is false when no rule allows DNS there. Safe for
// concurrent use; the Matcher returned must not change afterwards.
type RuleSource interface {
	DNSRules(endpoint uint64, dst netip.AddrPort) (m *Matcher, ok bool)
}

// Auditor is implemented by a RuleSource whose endpoints may be in policy
// audit mode (Cilium's PolicyAuditMode): a query the rules would refuse is
// then forwarded, answered as an allowed one, and recorded as
// flow.Audited. Asked only for a query that would be refused.
type Auditor interface {
	DNSAudit(endpoint uint64) bool
}

// Deps are the proxy's collaborators. Endpoints, Rules, IPCache and
// Identities are required.
type Deps struct {
	Endpoints  EndpointLookup
	Rules      RuleSource
	IPCache    IPCache
	Identities IdentityAllocator
	Policy     PolicyUpdater // optional: nothing to wait for
	Conns      ConnTracker   // optional: expired IPs are removed at once
	Flows      flow.Sink     // optional: flow.Discard
	Logger     *slog.Logger  // optional: slog.Default()
}

// Proxy is the DNS proxy. Create it with New (which binds its sockets),
// serve with Run.
type Proxy struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	flows flow.Sink
	cache *Cache
	upd   *updater
	stats Stats
	sem   chan struct{}

	udp *net.UDPConn
	tcp *net.TCPListener

	connMu sync.Mutex
	conns  map[net.Conn]struct{}

	bufs sync.Pool

	restoredCh chan struct{} // closed once the restored cache is in the ipcache
}

// New validates cfg, binds the listeners and returns the proxy. Call Run to
// serve, or Close to release the sockets of a proxy never run.
func New(cfg Config, deps Deps) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dns proxy config: %w", err)
	}
	if deps.Endpoints == nil || deps.Rules == nil || deps.IPCache == nil || deps.Identities == nil {
		return nil, errors.New("dns proxy: Endpoints, Rules, IPCache and Identities are required")
	}
	cfg = cfg.withDefaults()
	p := &Proxy{
		cfg:   cfg,
		deps:  deps,
		log:   deps.Logger,
		flows: deps.Flows,
		cache: NewCache(cfg),
		sem:   make(chan struct{}, cfg.MaxInFlight),
		conns: make(map[net.Conn]struct{}),

		restoredCh: make(chan struct{}),
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.flows == nil {
		p.flows = flow.Discard
	}
	p.cache.stats = &p.stats
	p.bufs.New = func() any { b := make([]byte, 65535); return &b }
	p.upd = newUpdater(p.cache, deps.IPCache, deps.Identities, deps.Policy, deps.Conns, p.log, &p.stats)
	// When both listeners share an address with port 0, TCP takes the
	// port UDP got, so one address serves both (as DNS servers do); retry
	// if that TCP port happens to be taken.
	shared := cfg.UDPAddr != "" && cfg.TCPAddr == cfg.UDPAddr
	var err error
	for attempt := 0; ; attempt++ {
		if err = p.listen(cfg, shared); err == nil || !shared || attempt == 10 {
			break
		}
		p.Close()
		p.udp, p.tcp = nil, nil
	}
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Proxy) listen(cfg Config, shared bool) error {
	if cfg.UDPAddr != "" {
		c, err := listenUDP(cfg.UDPAddr, cfg.Transparent)
		if err != nil {
			return fmt.Errorf("dns proxy: listen udp %s: %w", cfg.UDPAddr, err)
		}
		p.udp = c
	}
	if cfg.TCPAddr != "" {
		addr := cfg.TCPAddr
		if shared {
			// The configured host with UDP's port: the bound address
			// of a dual-stack wildcard (":0") reads "[::]", which would
			// make TCP an IPv6-only socket.
			host, _, err := net.SplitHostPort(cfg.TCPAddr)
			if err != nil {
				return fmt.Errorf("dns proxy: tcp address %q: %w", cfg.TCPAddr, err)
			}
			addr = net.JoinHostPort(host, strconv.Itoa(int(p.UDPAddr().Port())))
		}
		l, err := listenTCP(addr, cfg.Transparent)
		if err != nil {
			return fmt.Errorf("dns proxy: listen tcp %s: %w", addr, err)
		}
		p.tcp = l
	}
	return nil
}

// UDPAddr returns the bound UDP address, or an invalid one.
func (p *Proxy) UDPAddr() netip.AddrPort {
	if p.udp == nil {
		return netip.AddrPort{}
	}
	return addrPortOf(p.udp.LocalAddr())
}

// TCPAddr returns the bound TCP address, or an invalid one.
func (p *Proxy) TCPAddr() netip.AddrPort {
	if p.tcp == nil {
		return netip.AddrPort{}
	}
	return addrPortOf(p.tcp.Addr())
}

// Cache returns the proxy's FQDN cache.
func (p *Proxy) Cache() *Cache { return p.cache }

// Stats returns the proxy's counters.
func (p *Proxy) Stats() *Stats { return &p.stats }

// SetSelectors replaces the toFQDNs selectors of every policy (the union
// over endpoints: the ipcache is global). Cached IPs are relabelled in the
// background.
func (p *Proxy) SetSelectors(sels []policy.PortRuleDNS) error {
	cs, err := compileSelectors(sels)
	if err != nil {
		return err
	}
	p.upd.selectors.Store(newSelectorSet(cs))
	p.upd.resyncWant.Add(1)
	select {
	case p.upd.resync <- struct{}{}:
	default: // a resync is already pending
	}
	return nil
}

// Identity returns the FQDN identity the proxy wrote to the ipcache for ip
// and the selector labels it stands for.
func (p *Proxy) Identity(ip netip.Addr) (uint32, []string, bool) {
	return p.upd.identityOf(ip.Unmap())
}

// Close releases the sockets. Run closes them itself when it returns.
func (p *Proxy) Close() error {
	var errs []error
	if p.udp != nil {
		errs = append(errs, ignoreClosed(p.udp.Close()))
	}
	if p.tcp != nil {
		errs = append(errs, ignoreClosed(p.tcp.Close()))
	}
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Restored is closed once Run has put the persisted cache back into the
// ipcache (the agent then prunes what no owner claimed in a previous run).
func (p *Proxy) Restored() <-chan struct{} { return p.restoredCh }

// Run restores the persisted cache, then serves until ctx ends. It returns
// after every goroutine it started has exited, having saved the cache.
func (p *Proxy) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup

	if err := p.restore(); err != nil {
		p.log.Warn("fqdn state not restored", "path", p.cfg.StateFile, "error", err)
	}
	updCtx, updCancel := context.WithCancel(context.WithoutCancel(ctx))
	updDone := make(chan struct{})
	go func() {
		defer close(updDone)
		p.upd.run(updCtx, p.cfg.GCInterval, p.saveIfDirty)
	}()
	// Restored IPs go back into the ipcache before the first answer.
	restored := updateReq{all: true, done: make(chan struct{})}
	select {
	case p.upd.reqs <- restored:
		select {
		case <-restored.done:
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	if ctx.Err() == nil {
		close(p.restoredCh)
	}

	errc := make(chan error, 2)
	if p.udp != nil {
		wg.Go(func() { errc <- p.serveUDP(ctx, &wg) })
	}
	if p.tcp != nil {
		wg.Go(func() { errc <- p.serveTCP(ctx, &wg) })
	}
	wg.Go(func() {
		<-ctx.Done()
		p.Close()
		p.connMu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.connMu.Unlock()
	})
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// Stop serving, let in-flight queries finish (their upstream calls
	// end with ctx), then stop the updater and save what they learnt.
	cancel()
	p.Close()
	wg.Wait()
	updCancel()
	<-updDone
	if serr := p.save(); serr != nil {
		p.log.Warn("fqdn state not saved", "path", p.cfg.StateFile, "error", serr)
	}
	return err
}

func (p *Proxy) serveUDP(ctx context.Context, wg *sync.WaitGroup) error {
	local := addrPortOf(p.udp.LocalAddr())
	oob := make([]byte, 256)
	buf := make([]byte, 65535)
	for {
		n, oobn, _, from, err := p.udp.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dns proxy: read udp: %w", err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		dst := local
		if p.cfg.Transparent {
			if d, ok := origDst(oob[:oobn]); ok {
				dst = d
			}
		}
		select {
		case p.sem <- struct{}{}:
		default:
			p.stats.Overload.Add(1)
			if r := overloadReply(buf[:n]); r != nil {
				p.replyUDP(local, dst, from, r)
			}
			continue
		}
		pkt := append([]byte(nil), buf[:n]...)
		wg.Go(func() {
			defer func() { <-p.sem }()
			if resp := p.handle(ctx, pkt, from, dst, "UDP"); resp != nil {
				p.replyUDP(local, dst, from, resp)
			}
		})
	}
}

func (p *Proxy) replyUDP(local, dst, to netip.AddrPort, resp []byte) {
	var err error
	if !p.cfg.Transparent || dst == local {
		_, err = p.udp.WriteToUDPAddrPort(resp, to)
	} else {
		err = sendFrom(dst, to, resp, p.cfg.Mark)
	}
	if err != nil {
		p.log.Debug("dns reply not sent", "to", to, "from", dst, "error", err)
	}
}

func (p *Proxy) serveTCP(ctx context.Context, wg *sync.WaitGroup) error {
	for {
		c, err := p.tcp.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dns proxy: accept: %w", err)
		}
		p.connMu.Lock()
		p.conns[c] = struct{}{}
		p.connMu.Unlock()
		wg.Go(func() {
			p.serveConn(ctx, c, wg)
			p.connMu.Lock()
			delete(p.conns, c)
			p.connMu.Unlock()
		})
	}
}

// tcpIdleTimeout closes a client connection with no query for that long
// (RFC 7766 §6.2.3 suggests seconds).
const tcpIdleTimeout = 10 * time.Second

// serveConn reads length-prefixed queries (RFC 1035 §4.2.2) and answers
// them concurrently (RFC 7766 §6.2.1.1: pipelined, answered out of order).
func (p *Proxy) serveConn(ctx context.Context, c net.Conn, wg *sync.WaitGroup) {
	var inflight sync.WaitGroup
	defer func() {
		inflight.Wait()
		c.Close()
	}()
	from := addrPortOf(c.RemoteAddr())
	dst := addrPortOf(c.LocalAddr()) // the original destination under TPROXY
	if !p.cfg.Transparent {
		dst = p.TCPAddr()
	}
	var wmu sync.Mutex
	var hdr [2]byte
	for {
		if err := c.SetReadDeadline(time.Now().Add(tcpIdleTimeout)); err != nil {
			return
		}
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if n < headerLen {
			p.stats.Malformed.Add(1)
			return // a frame too short to hold a header: drop the connection
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(c, msg); err != nil {
			p.stats.Malformed.Add(1)
			return
		}
		select {
		case p.sem <- struct{}{}:
		default:
			p.stats.Overload.Add(1)
			if r := overloadReply(msg); r != nil {
				writeFrame(c, &wmu, r)
			}
			continue
		}
		inflight.Add(1)
		wg.Go(func() {
			defer func() { <-p.sem; inflight.Done() }()
			if resp := p.handle(ctx, msg, from, dst, "TCP"); resp != nil {
				writeFrame(c, &wmu, resp)
			}
		})
	}
}

func writeFrame(c net.Conn, mu *sync.Mutex, msg []byte) {
	if len(msg) > 65535 {
		return
	}
	b := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(b, uint16(len(msg)))
	copy(b[2:], msg)
	mu.Lock()
	defer mu.Unlock()
	if err := c.SetWriteDeadline(time.Now().Add(tcpIdleTimeout)); err != nil {
		return
	}
	_, _ = c.Write(b) // a client gone away is not an error of ours
}

const headerLen = 12

// handle decides on one query and returns the bytes to answer with, or nil
// to stay silent. pkt is only read before handle returns.
func (p *Proxy) handle(ctx context.Context, pkt []byte, from, dst netip.AddrPort, l4 string) []byte {
	p.stats.Queries.Add(1)
	rec := &flow.Record{
		Time:        time.Now(),
		Direction:   flow.Egress,
		Proto:       "dns",
		Source:      flow.Endpoint{IP: from.Addr().String(), Port: from.Port()},
		Destination: flow.Endpoint{IP: dst.Addr().String(), Port: dst.Port()},
		L4:          &flow.L4{Protocol: l4},
		DNS:         &flow.DNS{},
	}
	var q mdns.Msg
	if err := q.Unpack(pkt); err != nil || q.Response {
		p.stats.Malformed.Add(1)
		rec.Verdict, rec.Reason, rec.DNS.RCode = flow.Error, "malformed query", "FORMERR"
		p.flows.Emit(rec)
		return formErr(pkt)
	}
	if len(q.Question) != 1 {
		p.stats.Malformed.Add(1)
		rec.Verdict, rec.Reason, rec.DNS.RCode = flow.Error, fmt.Sprintf("%d questions", len(q.Question)), "FORMERR"
		p.flows.Emit(rec)
		return p.reply(&q, mdns.RcodeFormatError)
	}
	qq := q.Question[0]
	rec.DNS.Query, rec.DNS.QType = qq.Name, typeString(qq.Qtype)

	deny := func(reason string, rcode int) []byte {
		p.stats.Denied.Add(1)
		rec.Verdict, rec.Reason, rec.DNS.RCode = flow.Denied, reason, mdns.RcodeToString[rcode]
		p.flows.Emit(rec)
		return p.reply(&q, rcode)
	}
	reject := mdns.RcodeRefused
	if p.cfg.RejectNXDomain {
		reject = mdns.RcodeNameError
	}
	if q.Opcode != mdns.OpcodeQuery {
		return deny("opcode "+mdns.OpcodeToString[q.Opcode], mdns.RcodeNotImplemented)
	}
	ep, identity, ok := p.deps.Endpoints.Endpoint(from.Addr())
	if !ok {
		return deny("unknown endpoint", reject)
	}
	rec.Source.Identity = identity
	m, ok := p.deps.Rules.DNSRules(ep, dst)
	audited := ""
	if !ok || !m.Allow(qq.Name) {
		if a, isAuditor := p.deps.Rules.(Auditor); !isAuditor || !a.DNSAudit(ep) {
			return deny("no DNS rule matches", reject)
		}
		audited = "audit mode: would be refused: no DNS rule matches"
	}

	upstream := dst
	if p.cfg.Upstream.IsValid() {
		upstream = p.cfg.Upstream
	} else if p.isSelf(dst) {
		// Sent to the proxy's own port, not redirected: forwarding it to
		// its "original destination" would loop through the proxy.
		return deny("query not redirected to the proxy", reject)
	}
	resp, err := p.forward(ctx, pkt, upstream, l4)
	if err != nil {
		p.stats.UpstreamErrors.Add(1)
		rec.Verdict, rec.Reason = flow.Error, "upstream: "+err.Error()
		var ne net.Error
		if l4 == "UDP" && errors.As(err, &ne) && ne.Timeout() {
			p.flows.Emit(rec) // silence: the client retries, as with a lost packet
			return nil
		}
		rec.DNS.RCode = "SERVFAIL"
		p.flows.Emit(rec)
		return p.reply(&q, mdns.RcodeServerFailure)
	}
	r, err := checkAnswer(qq, resp)
	if err != nil {
		p.stats.UpstreamErrors.Add(1)
		rec.Verdict, rec.Reason, rec.DNS.RCode = flow.Error, "upstream: "+err.Error(), "SERVFAIL"
		p.flows.Emit(rec)
		return p.reply(&q, mdns.RcodeServerFailure)
	}
	p.stats.Allowed.Add(1)
	rec.Verdict, rec.DNS.RCode = flow.Allowed, mdns.RcodeToString[r.Rcode]
	if audited != "" {
		rec.Verdict, rec.Reason = flow.Audited, audited
	}
	if r.Rcode == mdns.RcodeSuccess {
		ips, ttl := extractIPs(r, qq.Name)
		if len(ips) > 0 {
			rec.DNS.TTL = ttl
			for _, ip := range ips {
				rec.DNS.IPs = append(rec.DNS.IPs, ip.String())
			}
			p.learn(ctx, ep, qq.Name, ips, ttl)
		}
	}
	// The client must not cache the answer longer than the cache keeps
	// its IPs: TTLs above MaxTTL are cut in the answer too.
	if maxTTL := uint32(min(p.cfg.MaxTTL/time.Second, math.MaxUint32)); capTTLs(r, maxTTL) {
		r.Compress = true
		out, err := r.Pack()
		if err != nil {
			p.stats.UpstreamErrors.Add(1)
			rec.Verdict, rec.Reason, rec.DNS.RCode = flow.Error, "repack answer: "+err.Error(), "SERVFAIL"
			p.flows.Emit(rec)
			return p.reply(&q, mdns.RcodeServerFailure)
		}
		resp = out
		p.stats.TTLCapped.Add(1)
		rec.DNS.TTL = min(rec.DNS.TTL, maxTTL)
	}
	binary.BigEndian.PutUint16(resp, q.Id) // the client's ID back
	p.flows.Emit(rec)
	return resp
}

// capTTLs cuts the TTLs of r's records to limit and reports whether any
// was above it. The OPT pseudo-record's TTL field holds EDNS flags, not a
// TTL (RFC 6891), and is left alone.
func capTTLs(r *mdns.Msg, limit uint32) bool {
	capped := false
	for _, sec := range [][]mdns.RR{r.Answer, r.Ns, r.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype != mdns.TypeOPT && h.Ttl > limit {
				h.Ttl = limit
				capped = true
			}
		}
	}
	return capped
}

// isSelf reports whether dst is one of the proxy's listening ports.
func (p *Proxy) isSelf(dst netip.AddrPort) bool {
	for _, l := range []netip.AddrPort{p.UDPAddr(), p.TCPAddr()} {
		if l.IsValid() && l.Port() == dst.Port() && (l.Addr().IsUnspecified() || l.Addr() == dst.Addr()) {
			return true
		}
	}
	return false
}

// learn records an answer's IPs and waits, at most UpdateTimeout, until
// the ipcache and policy reflect them: the answer is released after.
func (p *Proxy) learn(ctx context.Context, ep uint64, name string, ips []netip.Addr, ttl uint32) {
	start := time.Now()
	todo, wait := p.upd.learn(ep, name, ips, time.Duration(ttl)*time.Second, start)
	if !wait {
		p.stats.UpdateWait.Observe(0)
		return
	}
	r := updateReq{ips: todo, done: make(chan struct{})}
	t := time.NewTimer(p.cfg.UpdateTimeout)
	defer t.Stop()
	timedOut := false
	select {
	case p.upd.reqs <- r:
		select {
		case <-r.done:
		case <-t.C:
			timedOut = true
		case <-ctx.Done():
		}
	case <-t.C:
		timedOut = true
		p.upd.deferIPs(todo) // never queued
	case <-ctx.Done():
		p.upd.deferIPs(todo)
	}
	p.stats.UpdateWait.Observe(time.Since(start))
	if timedOut {
		p.stats.UpdateTimeouts.Add(1)
		p.log.Warn("answer released before its ipcache update completed", "name", name, "timeout", p.cfg.UpdateTimeout)
	}
}

// forward sends the query, with a fresh random ID, to upstream over l4 and
// returns the answer with that ID. Answers with another ID are ignored
// (late answers to earlier queries, or spoofing); over UDP the socket is
// connected, so the kernel drops datagrams from any other address.
func (p *Proxy) forward(ctx context.Context, pkt []byte, upstream netip.AddrPort, l4 string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ForwardTimeout)
	defer cancel()
	out := make([]byte, len(pkt))
	copy(out, pkt)
	var idb [2]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, fmt.Errorf("random id: %w", err)
	}
	id := binary.BigEndian.Uint16(idb[:])
	binary.BigEndian.PutUint16(out, id)

	d := net.Dialer{Control: markControl(p.cfg.Mark)}
	network := "udp"
	if l4 == "TCP" {
		network = "tcp"
	}
	c, err := d.DialContext(ctx, network, upstream.String())
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", upstream, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return nil, err
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if l4 == "TCP" {
		b := make([]byte, 2+len(out))
		binary.BigEndian.PutUint16(b, uint16(len(out)))
		copy(b[2:], out)
		if _, err := c.Write(b); err != nil {
			return nil, fmt.Errorf("write to %s: %w", upstream, err)
		}
		var hdr [2]byte
		for {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return nil, fmt.Errorf("read from %s: %w", upstream, err)
			}
			resp := make([]byte, binary.BigEndian.Uint16(hdr[:]))
			if _, err := io.ReadFull(c, resp); err != nil {
				return nil, fmt.Errorf("read from %s: %w", upstream, err)
			}
			if len(resp) >= headerLen && binary.BigEndian.Uint16(resp) == id {
				return resp, nil
			}
		}
	}
	if _, err := c.Write(out); err != nil {
		return nil, fmt.Errorf("write to %s: %w", upstream, err)
	}
	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	buf := *bp
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("read from %s: %w", upstream, err)
		}
		if n >= headerLen && binary.BigEndian.Uint16(buf) == id {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// checkAnswer parses an upstream answer and checks it answers q: a
// response with exactly q as its question. Anything else is never cached
// nor relayed.
func checkAnswer(q mdns.Question, resp []byte) (*mdns.Msg, error) {
	r := new(mdns.Msg)
	if err := r.Unpack(resp); err != nil {
		return nil, fmt.Errorf("malformed answer: %w", err)
	}
	if !r.Response {
		return nil, errors.New("answer is not a response")
	}
	if len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, q.Name) ||
		r.Question[0].Qtype != q.Qtype || r.Question[0].Qclass != q.Qclass {
		return nil, errors.New("answer does not match the question")
	}
	return r, nil
}

// extractIPs returns the A/AAAA addresses of qname, following the CNAME
// chain from qname (bounded, so loops end), and the lowest TTL along the
// chain: every IP is attached to the query name (as Cilium collapses
// chains). Records whose owner is off the chain are ignored.
func extractIPs(r *mdns.Msg, qname string) ([]netip.Addr, uint32) {
	const maxChain = 16
	cur := strings.ToLower(mdns.Fqdn(qname))
	chainTTL := uint32(0)
	first := true
	minTTL := func(t uint32) {
		if first || t < chainTTL {
			chainTTL, first = t, false
		}
	}
	visited := []string{cur}
	for {
		next := ""
		for _, rr := range r.Answer {
			h := rr.Header()
			if c, ok := rr.(*mdns.CNAME); ok && strings.EqualFold(h.Name, cur) {
				next = strings.ToLower(c.Target)
				minTTL(h.Ttl)
				break
			}
		}
		if next == "" {
			break
		}
		if slices.Contains(visited, next) || len(visited) > maxChain {
			return nil, 0 // a CNAME loop or an absurd chain: learn nothing
		}
		visited = append(visited, next)
		cur = next
	}
	var ips []netip.Addr
	addrTTL := uint32(0)
	firstAddr := true
	for _, rr := range r.Answer {
		h := rr.Header()
		if !strings.EqualFold(h.Name, cur) {
			continue
		}
		var ip netip.Addr
		switch a := rr.(type) {
		case *mdns.A:
			ip, _ = netip.AddrFromSlice(a.A.To4())
		case *mdns.AAAA:
			ip, _ = netip.AddrFromSlice(a.AAAA.To16())
		default:
			continue
		}
		if !ip.IsValid() {
			continue
		}
		ips = append(ips, ip.Unmap())
		if firstAddr || h.Ttl < addrTTL {
			addrTTL, firstAddr = h.Ttl, false
		}
	}
	if len(ips) == 0 {
		return nil, 0
	}
	if first || addrTTL < chainTTL {
		chainTTL = addrTTL
	}
	return ips, chainTTL
}

// reply builds an answer with rcode to q, keeping its ID, question, RD and
// EDNS (RFC 6891 §7: an OPT in the query gets one in the answer).
func (p *Proxy) reply(q *mdns.Msg, rcode int) []byte {
	r := new(mdns.Msg)
	r.SetRcode(q, rcode)
	if len(q.Question) > 1 {
		r.Question = q.Question[:1]
	}
	if opt := q.IsEdns0(); opt != nil {
		r.SetEdns0(opt.UDPSize(), opt.Do())
	}
	b, err := r.Pack()
	if err != nil {
		// The question itself does not pack back: answer with the header.
		r.Question, r.Extra = nil, nil
		if b, err = r.Pack(); err != nil {
			return nil
		}
	}
	return b
}

// formErr answers a query that does not parse with a bare FORMERR header,
// when it has a header at all (RFC 1035 §4.1.1).
func formErr(pkt []byte) []byte {
	if len(pkt) < headerLen || pkt[2]&0x80 != 0 { // too short, or a response
		return nil
	}
	b := make([]byte, headerLen)
	copy(b, pkt[:2])
	b[2] = 0x80 | pkt[2]&0x79 // QR, opcode and RD kept
	b[3] = mdns.RcodeFormatError
	return b
}

// overloadReply answers REFUSED without parsing beyond the header.
func overloadReply(pkt []byte) []byte {
	b := formErr(pkt)
	if b != nil {
		b[3] = mdns.RcodeRefused
	}
	return b
}

func typeString(t uint16) string {
	if s, ok := mdns.TypeToString[t]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", t)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
