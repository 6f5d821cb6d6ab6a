package policyfilter

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
)

// HTTPName is the filter_name of ward's HTTP policy filter.
const HTTPName = "ward.http"

// Env is what the filters share in one process: the policy subscriptions
// and the access logs. RegisterAll registers the filters over one Env.
type Env struct {
	Clients npdsclient.Clients
	Logger  proxylib.Logger

	mu   sync.Mutex
	logs map[string]*flow.Writer
	ship map[string]*flow.Shipper // by flow socket (flows.go)

	kafkaBudget proxylib.Budget // every ward.kafka connection's buffers (kafka.go)
}

// RegisterAll registers ward's policy filters in proxylib's registry.
func (e *Env) RegisterAll() {
	proxylib.RegisterHTTP(HTTPName, e.NewHTTPConfig)
	proxylib.RegisterNetwork(KafkaName, e.NewKafkaConfig)
}

// sink returns the access-log writer for path (shared per path), nil when
// path is empty.
func (e *Env) sink(path string) (flow.Sink, error) {
	if path == "" {
		return nil, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if w, ok := e.logs[path]; ok {
		return w, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("access_log: %w", err)
	}
	w := flow.NewWriter(f, 0)
	if e.logs == nil {
		e.logs = map[string]*flow.Writer{}
	}
	e.logs[path] = w
	go w.Run(context.Background()) //nolint:errcheck // process lifetime, like the subscription
	return w, nil
}

type httpConfig struct {
	cfg    Config
	client *npdsclient.Client
	sink   flow.Sink
}

// NewHTTPConfig is the proxylib.HTTPConfigFactory of ward.http.
func (e *Env) NewHTTPConfig(raw []byte) (proxylib.HTTPFilterConfig, error) {
	cfg, sink, client, err := e.setup(raw)
	if err != nil {
		return nil, err
	}
	return &httpConfig{cfg: cfg, client: client, sink: sink}, nil
}

// setup is what every policy filter's configuration starts with: the
// parsed config, its access log (nil without one) and the shared policy
// subscription of its agent.
func (e *Env) setup(raw []byte) (Config, flow.Sink, *npdsclient.Client, error) {
	cfg, err := parseConfig(raw)
	if err != nil {
		return cfg, nil, nil, err
	}
	sink, err := e.sink(cfg.AccessLog)
	if err != nil {
		return cfg, nil, nil, err
	}
	if cfg.FlowSocket != "" {
		sink = flow.Tee(sink, e.shipper(cfg.FlowSocket))
	}
	client := e.Clients.Get(cfg.XDSSocket, cfg.Node, compiler(e.Logger), e.Logger)
	if cfg.WaitFirstPolicyMS > 0 && !client.WaitSynced(time.Duration(cfg.WaitFirstPolicyMS)*time.Millisecond) && e.Logger != nil {
		e.Logger.Log(proxylib.LogWarn, fmt.Sprintf("ward: no policy from %s after %d ms; requests are denied until it arrives", cfg.XDSSocket, cfg.WaitFirstPolicyMS))
	}
	return cfg, sink, client, nil
}

func (c *httpConfig) NewHTTPFilter() proxylib.HTTPFilter {
	f := &httpFilter{c: c}
	f.filter = httpf.Filter{Rules: f, Sink: c.sink, Now: proxylib.Now, RecordQuery: c.cfg.RecordQuery}
	return f
}

func (c *httpConfig) Close() {}

// httpFilter is ward.http on one stream: it resolves the connection (the
// endpoint whose policy applies, the remote identity, the port) and hands
// the request to filters/http's Filter, which decides, edits headers and
// records; it answers as the Filter's Action says. Everything is held per
// stream so a request allocates nothing.
type httpFilter struct {
	c      *httpConfig
	filter httpf.Filter
	conn   httpf.Conn
	t      target
	s      proxylib.HTTPStream // during OnRequestHeaders only
	rules  [4]*npdsclient.Rule // Lookup's buffer
}

var (
	_ httpf.RuleSource = (*httpFilter)(nil)
	_ httpf.Describer  = (*httpFilter)(nil)
)

func (f *httpFilter) OnRequestHeaders(s proxylib.HTTPStream, _ bool) proxylib.HeadersStatus {
	f.t = f.c.cfg.resolve(f.c.client.State(), s.Conn())
	f.s = s
	f.conn.Ingress = f.c.cfg.ingress()
	f.conn.Port = f.t.port
	f.conn.RemoteIdentity = f.t.remoteID
	f.conn.Protocol = httpf.ProtoHTTP1
	f.conn.NoPolicy = ""
	f.conn.Audit = false
	if f.t.ep == nil {
		f.conn.NoPolicy = f.t.reason
	} else {
		f.conn.Audit = f.t.ep.Audit
	}
	f.conn.Describe = f
	act := f.filter.OnRequestHeaders(&f.conn, s)
	if !act.Deny && !f.conn.Ingress && f.t.ep != nil {
		act = f.chainIngress(s, act)
	}
	f.s = nil
	if act.Deny {
		s.SendLocalReply(act.Status, act.Headers, act.Body, "ward_access_denied")
		return proxylib.HeadersStopIteration
	}
	return proxylib.HeadersContinue
}

// chainIngress applies, on an egress listener, a local destination's
// ingress HTTP rules to a request its source's egress rules allowed: one
// proxy on the path, not two. The egress listener's upstream is marked
// redirect.MarkIngressChecked (the datapath does not hand it to the
// ingress proxy) and the destination's ingress L7 decision is taken here,
// with the source's
// identity, recorded as an ingress flow of the destination. L3/L4
// verdicts (no rule, deny, allow-all) stay the datapath's.
func (f *httpFilter) chainIngress(s proxylib.HTTPStream, egress httpf.Action) httpf.Action {
	st := f.c.client.State()
	dst, ok := st.EndpointByIP(f.t.local.Addr())
	if !ok {
		return egress
	}
	src := f.c.cfg.identity(st, f.t.remote.Addr())
	if v, _ := dst.Lookup(true, f.t.port, src, f.rules[:0]); v != npdsclient.CheckL7 {
		return egress
	}
	saved, conn := f.t, f.conn
	f.t.ep, f.t.remoteID = dst, src
	f.conn.Ingress, f.conn.RemoteIdentity, f.conn.Audit = true, src, dst.Audit
	act := f.filter.OnRequestHeaders(&f.conn, s)
	f.t = saved
	f.conn.Ingress, f.conn.RemoteIdentity, f.conn.Audit = conn.Ingress, conn.RemoteIdentity, conn.Audit
	return act
}

// Rules is the httpf.RuleSource over the current policy State: the rules
// of the connection's endpoint that l7.Select picks (npdsclient Lookup),
// each rule's HTTP matcher. A non-HTTP rule on an HTTP listener allows
// nothing.
func (f *httpFilter) Rules(c *httpf.Conn, buf []httpf.RuleSet) (l7.Outcome, []httpf.RuleSet) {
	out, rules := f.t.ep.Lookup(c.Ingress, c.Port, c.RemoteIdentity, f.rules[:0])
	sets := buf[:0]
	for _, r := range rules {
		if m, ok := r.L7.(*httpf.Matcher); ok {
			sets = append(sets, httpf.RuleSet{Name: r.Name, Matcher: m})
		}
	}
	return out, sets
}

// Describe completes a flow record with the connection's addresses, the
// endpoint and, on decrypted traffic, the client's SNI.
func (f *httpFilter) Describe(r *flow.Record) {
	t := &f.t
	peer := flow.Endpoint{Identity: t.remoteID, IP: t.remote.Addr().String(), Port: t.remote.Port()}
	local := flow.Endpoint{IP: t.local.Addr().String(), Port: t.port}
	if t.ep != nil {
		local.Labels = []string{"endpoint:" + t.ep.Name}
	}
	r.Source, r.Destination = peer, local
	if !f.conn.Ingress {
		peer.IP, peer.Port = t.local.Addr().String(), t.port
		src := flow.Endpoint{IP: t.remote.Addr().String(), Port: t.remote.Port(), Labels: local.Labels}
		r.Source, r.Destination = src, peer
	}
	if f.s != nil {
		if sni := f.s.RequestedServerName(); sni != "" {
			// Decrypted traffic: the listener terminated the client's TLS.
			r.TLS = &flow.TLS{SNI: sni, Intercepted: true}
		}
	}
}
