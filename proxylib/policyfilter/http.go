package policyfilter

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"

	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/flow"
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
	return cfg, sink, e.Clients.Get(cfg.XDSSocket, cfg.Node, compiler(e.Logger), e.Logger), nil
}

func (c *httpConfig) NewHTTPFilter() proxylib.HTTPFilter { return &httpFilter{c: c} }
func (c *httpConfig) Close()                             {}

type httpFilter struct {
	c     *httpConfig
	rules [4]*npdsclient.Rule // Lookup's buffer: no allocation per request
}

func (f *httpFilter) OnRequestHeaders(s proxylib.HTTPStream, _ bool) proxylib.HeadersStatus {
	st := f.c.client.State()
	t := f.c.cfg.resolve(st, s.Conn())
	var req httpf.Request
	req.Method, _ = s.RequestHeader(":method")
	req.Path, _ = s.RequestHeader(":path")
	req.Host, _ = s.RequestHeader(":authority")
	ct, _ := s.RequestHeader("content-type")
	req.Headers = s // HTTPStream.Header joins repeated values

	if t.ep == nil {
		return f.deny(s, &t, &req, ct, t.reason)
	}
	if f.c.sink != nil {
		t.sni = s.RequestedServerName()
	}
	verdict, rules := t.ep.Lookup(f.c.cfg.ingress(), t.port, t.remoteID, f.rules[:0])
	switch verdict {
	case npdsclient.AllowAll:
		f.record(&t, &req, ct, flow.Allowed, "l4 allow", -1, 0)
		return proxylib.HeadersContinue
	case npdsclient.Denied:
		return f.deny(s, &t, &req, ct, "deny rule")
	case npdsclient.NoPolicy:
		return f.deny(s, &t, &req, ct, "no rule for identity "+strconv.FormatUint(uint64(t.remoteID), 10)+" on port "+strconv.Itoa(int(t.port)))
	}
	for _, r := range rules {
		m, ok := r.L7.(*httpf.Matcher)
		if !ok {
			continue // a non-HTTP rule on an HTTP listener allows nothing
		}
		res := m.Match(&req)
		if res.Allowed {
			for _, e := range res.Edits {
				e.Apply(s)
			}
			f.record(&t, &req, ct, flow.Allowed, r.Name, res.Rule, 0)
			return proxylib.HeadersContinue
		}
	}
	return f.deny(s, &t, &req, ct, "no http rule matched")
}

// deny answers 403 Access denied, or for gRPC a trailers-only response with
// grpc-status 7 (Envoy's own local reply for gRPC would carry status 0).
func (f *httpFilter) deny(s proxylib.HTTPStream, t *target, req *httpf.Request, ct, reason string) proxylib.HeadersStatus {
	if f.c.sink != nil && t.sni == "" {
		t.sni = s.RequestedServerName()
	}
	status, headers, body := httpf.DenyResponse(ct)
	s.SendLocalReply(status, headers, body, "ward_access_denied")
	f.record(t, req, ct, flow.Denied, reason, -1, status)
	return proxylib.HeadersStopIteration
}

func (f *httpFilter) record(t *target, req *httpf.Request, ct string, v flow.Verdict, reason string, rule, status int) {
	if f.c.sink == nil {
		return
	}
	meta := httpf.RecordMeta{Time: proxylib.Now(), Direction: flow.Ingress, Protocol: httpf.ProtoHTTP1}
	if httpf.IsGRPC(ct) {
		meta.Protocol = httpf.ProtoGRPC
	}
	peer := flow.Endpoint{Identity: t.remoteID, IP: t.remote.Addr().String(), Port: t.remote.Port()}
	local := flow.Endpoint{IP: t.local.Addr().String(), Port: t.port}
	if t.ep != nil {
		local.Labels = []string{"endpoint:" + t.ep.Name}
	}
	meta.Source, meta.Destination = peer, local
	if !f.c.cfg.ingress() {
		meta.Direction = flow.Egress
		peer.IP, peer.Port = t.local.Addr().String(), t.port
		src := flow.Endpoint{IP: t.remote.Addr().String(), Port: t.remote.Port(), Labels: local.Labels}
		meta.Source, meta.Destination = src, peer
	}
	r := httpf.NewRecord(&meta, req, v, reason, rule, status)
	if t.sni != "" {
		// Decrypted traffic: the listener terminated the client's TLS.
		r.TLS = &flow.TLS{SNI: t.sni, Intercepted: true}
	}
	f.c.sink.Emit(r)
}

func (f *httpFilter) OnResponseHeaders(proxylib.HTTPStream, bool) proxylib.HeadersStatus {
	return proxylib.HeadersContinue
}

func (f *httpFilter) OnComplete() {}
