package policyfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
)

// KafkaName is the filter_name of ward's Kafka network filter.
const KafkaName = "ward.kafka"

// KafkaOptions are ward.kafka's memory bounds, the "kafka" object of its
// filter_config.
type KafkaOptions struct {
	// MaxFrame bounds a request frame in bytes (the size prefix
	// excluded); a larger request closes the connection as a broker does
	// over its socket.request.max.bytes. 0 means kafka.DefaultMaxFrame
	// (4 MiB); at most kafka.MaxFrameSize (100 MiB).
	MaxFrame int `json:"max_frame,omitempty"`
	// MemoryBudget bounds the bytes every ward.kafka connection of the
	// process buffers together (frames waiting to be complete). A
	// connection whose buffer would take the process over the budget is
	// closed and counted. 0 means DefaultKafkaBudget; -1 no bound. Envoy
	// has one budget: the configuration created last sets it.
	MemoryBudget int64 `json:"memory_budget,omitempty"`
}

// DefaultKafkaBudget is the default KafkaOptions.MemoryBudget: 128 MiB,
// 32 connections each holding a whole default max frame. Go's heap may
// take up to twice what is live (GOGC=100), so this keeps ward.kafka's
// share of Envoy's memory near a quarter GiB whatever clients send.
const DefaultKafkaBudget = 128 << 20

func (o KafkaOptions) validate() error {
	var errs []error
	if o.MaxFrame < 0 || o.MaxFrame > kafka.MaxFrameSize {
		errs = append(errs, fmt.Errorf("filter_config.kafka.max_frame %d: want 0..%d", o.MaxFrame, kafka.MaxFrameSize))
	}
	if o.MemoryBudget < -1 {
		errs = append(errs, fmt.Errorf("filter_config.kafka.memory_budget %d: want -1 (no bound), 0 (default) or a size in bytes", o.MemoryBudget))
	}
	return errors.Join(errs...)
}

func (o KafkaOptions) budget() int64 {
	switch o.MemoryBudget {
	case 0:
		return DefaultKafkaBudget
	case -1:
		return 0 // unlimited
	}
	return o.MemoryBudget
}

// kafkaL7 is what Compile keeps for a Kafka rule: the compiled matcher and
// its source, so several rules selecting one remote can be merged.
type kafkaL7 struct {
	m     *kafka.Matcher
	rules []l7.KafkaRule
}

type kafkaConfig struct {
	cfg    Config
	client *npdsclient.Client
	flows  flow.Sink // nil: no records
	budget *proxylib.Budget
	logger proxylib.Logger
	// allowAll is the one matcher of ports whose rule has no Kafka part:
	// the parser expects the same pointer until the policy changes.
	allowAll *kafka.Matcher

	mu        sync.Mutex
	merged    map[mergeKey]*kafka.Matcher
	anded     map[[2]*kafka.Matcher]*kafka.Matcher // chained ingress, per State
	state     *npdsclient.State
	factories map[connRules]*kafka.Factory // one per endpoint: topic IDs learnt on one connection serve the others
}

type mergeKey struct {
	ep      *npdsclient.Endpoint
	ingress bool
	port    uint16
	remote  uint32
}

// NewKafkaConfig is the proxylib.NetworkConfigFactory of ward.kafka.
func (e *Env) NewKafkaConfig(raw []byte) (proxylib.NetworkFilterConfig, error) {
	cfg, sink, client, err := e.setup(raw)
	if err != nil {
		return nil, err
	}
	if err := cfg.Kafka.validate(); err != nil {
		return nil, err
	}
	all, err := kafka.Compile(nil)
	if err != nil {
		return nil, err
	}
	e.kafkaBudget.SetLimit(cfg.Kafka.budget())
	return &kafkaConfig{cfg: cfg, client: client, flows: sink, budget: &e.kafkaBudget, logger: e.Logger,
		factories: map[connRules]*kafka.Factory{}, allowAll: all}, nil
}

func (c *kafkaConfig) Close() {}

func (c *kafkaConfig) factory(rs connRules) *kafka.Factory {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.factories[rs]
	if !ok {
		f = kafka.NewParserFactory(rs, c.flows)
		f.MaxFrame = c.cfg.Kafka.MaxFrame
		c.factories[rs] = f
	}
	return f
}

// connRules is the kafka.RuleSource of the connections of one endpoint
// (named by the configuration, or owning ip), over the current policy
// State: a rule without L7 part allows everything (nil rules compile to
// allow-all); several L7 rules selecting the remote are merged once per
// State.
//
// On an egress listener whose connection goes to a local endpoint (dst,
// from client src), the destination's ingress L7 rules for the client
// apply too (chained ingress, as ward.http's chainIngress): one proxy on
// the path, not two. The upstream carries redirect.MarkIngressChecked, so
// the datapath does not hand it to the ingress proxy.
type connRules struct {
	c  *kafkaConfig
	ep string // endpoint name, resolved per call from the current State
	ip netip.Addr

	dst, src netip.Addr // chained ingress: a local destination and the client
	port     uint16     // and the destination port
}

// chain is the local destination's endpoint and the client's identity
// when the destination's ingress L7 rules apply to this connection
// (chainedIngress).
func (r connRules) chain(st *npdsclient.State) (dst *npdsclient.Endpoint, src uint32, ok bool) {
	if !r.dst.IsValid() {
		return nil, 0, false
	}
	return chainedIngress(st, r.c.cfg, r.dst, r.src, r.port)
}

// endpoint is the connection's endpoint in the current State.
func (r connRules) endpoint() (*npdsclient.State, *npdsclient.Endpoint, bool) {
	st := r.c.client.State()
	var ep *npdsclient.Endpoint
	var ok bool
	if r.ep != "" {
		ep, ok = st.Endpoint(r.ep)
	} else {
		ep, ok = st.EndpointByIP(r.ip)
	}
	return st, ep, ok
}

func (r connRules) Rules(ingress bool, port uint16, remote uint32) (*kafka.Matcher, bool) {
	st, ep, ok := r.endpoint()
	if !ok {
		return nil, false
	}
	m, ok := r.c.matcher(st, ep, ingress, port, remote)
	if ingress {
		return m, ok
	}
	dst, src, chained := r.chain(st)
	switch {
	case !chained:
		return m, ok
	case !ok && !ep.Audit:
		return nil, false
	}
	im, iok := r.c.matcher(st, dst, true, port, src)
	switch {
	case !iok:
		return nil, false
	case ep.Audit:
		// The client's egress rules are audited, never enforced; the
		// destination's ingress rules are (Audit is false here).
		return im, true
	}
	return r.c.and(st, m, im), true
}

// chainedIngress reports whether a connection from client src to local
// endpoint dst on port needs dst's ingress L7 rules applied on the egress
// listener: dst's ingress policy selects the client with L7 rules and dst
// is not in audit mode (whose ingress denials would pass anyway). L3/L4
// verdicts stay the datapath's.
func chainedIngress(st *npdsclient.State, cfg Config, dstIP, srcIP netip.Addr, port uint16) (dst *npdsclient.Endpoint, src uint32, ok bool) {
	dst, found := st.EndpointByIP(dstIP)
	if !found || dst.Audit {
		return nil, 0, false
	}
	src = cfg.identity(st, srcIP)
	if v, _ := dst.Lookup(true, port, src, nil); v != npdsclient.CheckL7 {
		return nil, 0, false
	}
	return dst, src, true
}

// matcher is the Kafka matcher of ep's rules for remote on port.
func (c *kafkaConfig) matcher(st *npdsclient.State, ep *npdsclient.Endpoint, ingress bool, port uint16, remote uint32) (*kafka.Matcher, bool) {
	v, rules := ep.Lookup(ingress, port, remote, nil)
	switch v {
	case npdsclient.AllowAll:
		return c.allowAll, true
	case npdsclient.CheckL7:
	default:
		return nil, false
	}
	var ls []*kafkaL7
	for _, rl := range rules {
		if k, ok := rl.L7.(*kafkaL7); ok {
			ls = append(ls, k)
		}
	}
	switch len(ls) {
	case 0:
		return nil, false
	case 1:
		return ls[0].m, true
	}
	return c.merge(st, mergeKey{ep, ingress, port, remote}, ls), true
}

// Audit reports whether the endpoint is in policy audit mode
// (kafka.Auditor).
func (r connRules) Audit() bool {
	st, ep, ok := r.endpoint()
	if !ok || !ep.Audit {
		return false
	}
	// A local destination's chained ingress rules are enforced unless
	// it is in audit mode itself (then they are not chained).
	_, _, chained := r.chain(st)
	return !chained
}

var _ kafka.Auditor = connRules{}

func (c *kafkaConfig) merge(st *npdsclient.State, k mergeKey, ls []*kafkaL7) *kafka.Matcher {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset(st)
	if m, ok := c.merged[k]; ok {
		return m
	}
	var all []l7.KafkaRule
	for _, l := range ls {
		all = append(all, l.rules...)
	}
	m, err := kafka.Compile(all)
	if err != nil {
		m = ls[0].m // each part compiled; the union cannot fail
	}
	c.merged[k] = m
	return m
}

// and is a.And(b), the same pointer for the same pair until the State
// changes (the parser restarts a fetch session when its matcher changes).
func (c *kafkaConfig) and(st *npdsclient.State, a, b *kafka.Matcher) *kafka.Matcher {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset(st)
	k := [2]*kafka.Matcher{a, b}
	m, ok := c.anded[k]
	if !ok {
		m = a.And(b)
		c.anded[k] = m
	}
	return m
}

// reset forgets the merged matchers of an older State; c.mu held.
func (c *kafkaConfig) reset(st *npdsclient.State) {
	if c.state != st {
		c.state, c.merged, c.anded = st, map[mergeKey]*kafka.Matcher{}, map[[2]*kafka.Matcher]*kafka.Matcher{}
	}
}

func (c *kafkaConfig) NewNetworkFilter() proxylib.NetworkFilter { return &streamFilter{c: c} }

// streamFilter runs a proxylib.Stream (the Kafka parser) over Envoy's
// network filter: a read the parser passes whole continues in Envoy's
// buffer; otherwise every byte is drained from Envoy's buffers and only
// what the parser passes (or injects) is sent on.
type streamFilter struct {
	c      *kafkaConfig
	stream *proxylib.Stream
	out    streamOut
}

// streamOut is the StreamOutput over the NetworkConn of the current hook.
type streamOut struct {
	conn   proxylib.NetworkConn
	closed bool
	c      *kafkaConfig
}

func (o *streamOut) Forward(reply bool, data []byte) {
	if reply {
		o.conn.InjectWrite(data, false)
	} else {
		o.conn.InjectRead(data, false)
	}
}

// End passes a half-close on: tcp_proxy shuts down the upstream's writes
// when the client ended (and the client's when the broker did), so a
// closed client does not leave its broker connection open.
func (o *streamOut) End(reply bool) {
	if reply {
		o.conn.InjectWrite(nil, true)
	} else {
		o.conn.InjectRead(nil, true)
	}
}

func (o *streamOut) Close(reason string) {
	o.closed = true
	if strings.HasPrefix(reason, "memory budget") && o.c.logger != nil {
		o.c.logger.Log(proxylib.LogWarn, fmt.Sprintf("ward.kafka: connection closed: %s (%d connections closed over budget so far)", reason, o.c.budget.Closed()))
	}
	o.conn.Close(true, reason)
}

func (f *streamFilter) OnNewConnection(c proxylib.NetworkConn) proxylib.NetworkStatus {
	a := c.Addrs()
	local, _ := netip.ParseAddrPort(a.Local)
	remote, _ := netip.ParseAddrPort(a.Remote)
	cfg := f.c.cfg
	st := f.c.client.State()
	info := &proxylib.ConnInfo{Ingress: cfg.ingress(), SrcAddr: a.Remote, DstAddr: a.Local, DstPort: local.Port(), ConnectionID: a.ID}
	if cfg.Port != 0 {
		info.DstPort = cfg.Port
	}
	rs := connRules{c: f.c, ep: cfg.Endpoint}
	if cfg.ingress() {
		rs.ip = local.Addr()
		info.SrcIdentity = cfg.identity(st, remote.Addr())
	} else {
		rs.ip = remote.Addr()
		info.DstIdentity = cfg.identity(st, local.Addr())
		if _, ok := st.EndpointByIP(local.Addr()); ok && cfg.Endpoint != "" {
			rs.dst, rs.src, rs.port = local.Addr(), remote.Addr(), info.DstPort
		}
	}
	info.PolicyName = cfg.Endpoint
	f.out.conn, f.out.c = c, f.c
	// The TCP stream listeners carry Kafka and the generic protocols
	// (l7proto): the port's rules say which parser runs.
	if _, ep, ok := rs.endpoint(); ok {
		if proto := portProto(ep, info.Ingress, info.DstPort); proto != "" {
			f.stream = f.newGenericStream(proto, rs, info)
			if f.stream == nil {
				c.Close(true, "l7proto "+proto+": no parser")
				return proxylib.NetworkStopIteration
			}
			return proxylib.NetworkContinue
		}
	}
	f.stream = proxylib.NewStream(f.c.factory(rs), &f.out, info)
	f.stream.Budget = f.c.budget
	return proxylib.NetworkContinue
}

func (f *streamFilter) on(c proxylib.NetworkConn, reply bool, data [][]byte, end bool) proxylib.NetworkStatus {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	f.out.conn = c
	if f.stream == nil || f.out.closed {
		if reply {
			c.DrainWrite(n)
		} else {
			c.DrainRead(n)
		}
		return proxylib.NetworkStopIteration
	}
	// Bytes the parser passes unchanged, all of them (the usual case when
	// the policy allows the requests), go on in Envoy's buffer: nothing is
	// drained, copied or injected.
	if f.stream.OnDataInPlace(reply, end, data) {
		return proxylib.NetworkContinue
	}
	// Otherwise the stream forwarded what passes and copied what it keeps;
	// drain after it read the views.
	if reply {
		c.DrainWrite(n)
	} else {
		c.DrainRead(n)
	}
	return proxylib.NetworkStopIteration
}

func (f *streamFilter) OnRead(c proxylib.NetworkConn, data [][]byte, end bool) proxylib.NetworkStatus {
	return f.on(c, false, data, end)
}

func (f *streamFilter) OnWrite(c proxylib.NetworkConn, data [][]byte, end bool) proxylib.NetworkStatus {
	return f.on(c, true, data, end)
}

// OnClose returns the stream's buffers to the budget, whichever side
// closed the connection.
func (f *streamFilter) OnClose(bool) {
	if f.stream != nil {
		f.stream.Release()
	}
}
