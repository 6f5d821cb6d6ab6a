package policyfilter

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/dirsource"
	"github.com/wardproxy/ward/policy/flowcheck"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// The round trip: policies as YAML → policy.Parse → resolution
// (policy.Repository, through flowcheck.Resolve) → xDS translation (the
// NPDS resource, marshalled and unmarshalled as bytes as it crosses into
// Envoy) → the policy client and compile path of libward.so → ward.http
// (filters/http.Filter), ward.kafka's matcher, and the DNS proxy's rules
// must give every flow the verdict `ward policy test` (flowcheck.Evaluate)
// gives it.

// envoyPath decides flows the way the proxies do.
type envoyPath struct {
	t      *testing.T
	snap   *policy.Snapshot
	client *npdsclient.Client
	kafka  *kafkaConfig
	// edits holds, per flow, the request headers after ward.http ran.
	edits map[string]map[string]string
	// checked counts L7 decisions made by each kind's proxy.
	checked map[l7.Kind]int
	// sni holds the flows whose verdict depends on the TLS SNI.
	sni map[string]bool
}

func epName(ep *policy.EndpointPolicy) string { return fmt.Sprintf("ep%d", ep.EndpointID) }

// newEnvoyPath translates the policy of every endpoint of the flows into
// NPDS resources, sends them through their wire encoding and applies them
// to a policy client with the filters' compiler.
func newEnvoyPath(t *testing.T, snap *policy.Snapshot, peers []flowcheck.Peers) *envoyPath {
	t.Helper()
	seen := map[uint64]bool{}
	var wire []*npds.NetworkPolicy
	for _, p := range peers {
		for _, ep := range []*policy.EndpointPolicy{p.SrcEP, p.DstEP} {
			if ep == nil || seen[ep.EndpointID] {
				continue
			}
			seen[ep.EndpointID] = true
			b, err := proto.Marshal(xds.NetworkPolicy(xds.EndpointInfo{Name: epName(ep), ID: ep.EndpointID}, ep))
			if err != nil {
				t.Fatal(err)
			}
			var back npds.NetworkPolicy
			if err := proto.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			wire = append(wire, &back)
		}
	}
	c := npdsclient.New(npdsclient.Config{Compile: Compile})
	if err := c.Apply(context.Background(), wire, nil); err != nil {
		t.Fatalf("the filters refuse the translated policy: %v", err)
	}
	all, err := kafka.Compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &envoyPath{t: t, snap: snap, client: c, edits: map[string]map[string]string{}, checked: map[l7.Kind]int{}, sni: map[string]bool{},
		kafka: &kafkaConfig{cfg: Config{XDSSocket: "x", Node: "n"}, client: c, allowAll: all, factories: map[connRules]*kafka.Factory{}}}
}

// verdict decides f as the datapath and the proxies would: each side that
// is a ward endpoint decides at L3/L4 (the policy model, as the BPF maps
// hold it), and a redirected flow is decided by its proxy. ok is false
// when the proxies cannot decide the flow here (it depends on the TLS SNI,
// which Envoy matches in its filter chains, not in the Go filters).
func (e *envoyPath) verdict(f flowcheck.Flow, p flowcheck.Peers) (verdict flow.Verdict, ok bool) {
	proto, err := policy.ParseProtocol(cmp(f.Protocol, "TCP"))
	if err != nil {
		e.t.Fatal(err)
	}
	port := uint16(f.Port)
	for _, side := range []struct {
		d      policy.Direction
		ep     *policy.EndpointPolicy
		remote policy.NumericIdentity
	}{{policy.Egress, p.SrcEP, p.Dst}, {policy.Ingress, p.DstEP, p.Src}} {
		if side.ep == nil {
			continue
		}
		dec := side.ep.Direction(side.d).Lookup(side.remote, proto, port, side.ep.Audit)
		switch dec.Verdict {
		case policy.VerdictDenied:
			return flowcheck.VerdictDenied, true
		case policy.VerdictRedirect:
			if f.SNI != "" || slices.ContainsFunc(dec.Selections, func(s *policy.L7Selection) bool { return len(s.ServerNames) > 0 }) {
				e.sni[f.Name] = true
				return "", false
			}
			if !e.proxy(f, side.ep, side.d, side.remote, port, dec.Kind) {
				return flowcheck.VerdictDenied, true
			}
		}
	}
	return flowcheck.VerdictAllowed, true
}

// proxy asks the proxy of kind about f.
func (e *envoyPath) proxy(f flowcheck.Flow, ep *policy.EndpointPolicy, d policy.Direction, remote policy.NumericIdentity, port uint16, kind l7.Kind) bool {
	e.checked[kind]++
	ingress := d == policy.Ingress
	switch kind {
	case l7.KindHTTP:
		dir := "egress"
		if ingress {
			dir = "ingress"
		}
		cfg := &httpConfig{cfg: Config{XDSSocket: "x", Node: "n", Endpoint: epName(ep), Port: port, RemoteIdentity: uint32(remote), Direction: dir}, client: e.client}
		h := map[string]string{}
		if f.HTTP != nil {
			for k, v := range f.HTTP.Headers {
				k = strings.ToLower(k)
				if old, ok := h[k]; ok {
					v = old + "," + v
				}
				h[k] = v
			}
			set := func(k, v string) {
				if v != "" {
					h[k] = v
				}
			}
			set(":method", f.HTTP.Method)
			set(":path", f.HTTP.Path)
			set(":authority", f.HTTP.Host)
		}
		s := &replyStream{fakeStream: fakeStream{h: h}, conn: proxylib.ConnAddrs{Remote: "192.0.2.1:40000", Local: fmt.Sprintf("192.0.2.2:%d", port)}}
		allowed := cfg.NewHTTPFilter().OnRequestHeaders(s, true) == proxylib.HeadersContinue
		e.edits[f.Name] = h
		if f.HTTP == nil {
			// No request of the port's protocol: only an allow-all
			// selection lets the flow through, as in flowcheck.
			return e.allowAll(ep, ingress, port, remote)
		}
		return allowed
	case l7.KindKafka:
		if f.Kafka == nil {
			return e.allowAll(ep, ingress, port, remote)
		}
		m, ok := connRules{c: e.kafka, ep: epName(ep)}.Rules(ingress, port, uint32(remote))
		if !ok {
			return false
		}
		key := kafkaKey(e.t, f.Kafka.APIKey)
		topics := slices.Clone(f.Kafka.Topics)
		sort.Strings(topics)
		return m.Allow(&kafka.Request{APIKey: key, APIVersion: f.Kafka.APIVersion, ClientID: f.Kafka.ClientID, Topics: topics})
	case l7.KindDNS:
		// The agent's DNS proxy glue: the policy model's DNS rules of the
		// query, compiled by filters/dns.
		rules, ok := ep.Direction(d).DNSRules(remote, port)
		if !ok {
			return false
		}
		if f.DNS == nil {
			return rules == nil
		}
		m, err := dns.Compile(rules)
		if err != nil {
			e.t.Errorf("dns rules of %s do not compile: %v", epName(ep), err)
			return false
		}
		return m.Allow(f.DNS.Query)
	case l7.KindTLS:
		return e.allowAll(ep, ingress, port, remote)
	}
	e.t.Errorf("flow %s: no proxy for kind %v", f.Name, kind)
	return false
}

// allowAll reports whether the translated policy lets every request of
// remote through on port.
func (e *envoyPath) allowAll(ep *policy.EndpointPolicy, ingress bool, port uint16, remote policy.NumericIdentity) bool {
	cep, ok := e.client.State().Endpoint(epName(ep))
	if !ok {
		return false
	}
	v, _ := cep.Lookup(ingress, port, uint32(remote), nil)
	return v == npdsclient.AllowAll
}

func kafkaKey(t *testing.T, raw json.RawMessage) int16 {
	var n int16
	if err := json.Unmarshal(raw, &n); err == nil {
		return n
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("apiKey %s", raw)
	}
	k, ok := kafka.APIKeyByName(s)
	if !ok {
		t.Fatalf("apiKey %q", s)
	}
	return k
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// roundTrip checks every flow: the proxies' verdict equals flowcheck's.
// It returns the proxies' verdicts by flow name.
func roundTrip(t *testing.T, ps []*policy.Policy, flows []flowcheck.Flow) (*envoyPath, map[string]flow.Verdict) {
	t.Helper()
	want, err := flowcheck.Evaluate(ps, flows, flowcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	snap, peers, err := flowcheck.Resolve(ps, flows, flowcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvoyPath(t, snap, peers)
	got := map[string]flow.Verdict{}
	for i, f := range flows {
		if want[i].Verdict == flowcheck.VerdictError {
			continue
		}
		v, ok := e.verdict(f, peers[i])
		if !ok {
			continue
		}
		got[f.Name] = v
		if v != want[i].Verdict {
			t.Errorf("flow %q: proxies say %s; ward policy test says %s (%s)", f.Name, v, want[i].Verdict, want[i].Reason)
		}
	}
	return e, got
}

// TestRoundTripExamples runs the round trip over every example policy set
// and its golden flows.
func TestRoundTripExamples(t *testing.T) {
	flowsFiles, err := filepath.Glob("../../examples/*/*.flows.json")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("../../examples/*/*/*.flows.json")
	flowsFiles = append(flowsFiles, more...)
	if len(flowsFiles) < 10 {
		t.Fatalf("found only %d flows files", len(flowsFiles))
	}
	total := map[l7.Kind]int{}
	for _, fl := range flowsFiles {
		t.Run(strings.TrimPrefix(fl, "../../examples/"), func(t *testing.T) {
			files, err := dirsource.Files(filepath.Dir(fl))
			if err != nil {
				t.Fatal(err)
			}
			var ps []*policy.Policy
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				p, err := policy.Parse(f, data)
				if err != nil {
					t.Fatal(err)
				}
				ps = append(ps, p...)
			}
			data, err := os.ReadFile(fl)
			if err != nil {
				t.Fatal(err)
			}
			flows, err := flowcheck.ParseFlows(data)
			if err != nil {
				t.Fatal(err)
			}
			e, got := roundTrip(t, ps, flows)
			for _, f := range flows {
				if _, ok := got[f.Name]; !ok && !e.sni[f.Name] {
					t.Errorf("flow %q undecided by the proxies", f.Name)
				}
			}
			if len(got) < len(flows) {
				t.Logf("%d of %d flows depend on the TLS SNI (Envoy's filter chain match, not the Go filters): not compared", len(flows)-len(got), len(flows))
			}
			for k, n := range e.checked {
				total[k] += n
			}
		})
	}
	for _, k := range []l7.Kind{l7.KindHTTP, l7.KindKafka, l7.KindDNS} {
		if total[k] == 0 {
			t.Errorf("the examples exercised no %v proxy decision", k)
		}
	}
	t.Logf("proxy decisions: http %d, kafka %d, dns %d, tls %d", total[l7.KindHTTP], total[l7.KindKafka], total[l7.KindDNS], total[l7.KindTLS])
}

// genFlow is one probe of a generated rule.
type genFlow struct {
	name  string
	http  *flowcheck.HTTP
	kafka *flowcheck.Kafka
	dns   string
	want  flow.Verdict
	// after: request headers ward.http must have set (mismatch actions).
	after map[string]string
	// gone: request headers ward.http must have removed.
	gone []string
}

func get(path string, headers ...string) *flowcheck.HTTP {
	h := &flowcheck.HTTP{Method: "GET", Path: path, Headers: map[string]string{}}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Headers[headers[i]] = headers[i+1]
	}
	return h
}

func kreq(key string, version int16, client string, topics ...string) *flowcheck.Kafka {
	return &flowcheck.Kafka{APIKey: json.RawMessage(`"` + key + `"`), APIVersion: version, ClientID: client, Topics: topics}
}

const (
	allow = flowcheck.VerdictAllowed
	deny  = flowcheck.VerdictDenied
)

// TestRoundTripEveryField generates one policy per field of every L7 rule
// kind and probes it with matching and non-matching requests: both paths
// must agree, and agree with the expected verdict.
func TestRoundTripEveryField(t *testing.T) {
	for _, tt := range []struct {
		name  string
		rules string // the rules block
		dns   bool   // an egress DNS rule to the server on 53
		flows []genFlow
	}{
		{name: "http path", rules: `{http: [{path: "/public/.*"}]}`, flows: []genFlow{
			{name: "match", http: get("/public/a"), want: allow},
			{name: "query included", http: get("/public/a?x=1"), want: allow},
			{name: "other path", http: get("/private"), want: deny},
			{name: "prefix only", http: get("/public"), want: deny},
		}},
		{name: "http method", rules: `{http: [{method: "GET|HEAD"}]}`, flows: []genFlow{
			{name: "GET", http: get("/"), want: allow},
			{name: "POST", http: &flowcheck.HTTP{Method: "POST", Path: "/"}, want: deny},
			{name: "GETX", http: &flowcheck.HTTP{Method: "GETX", Path: "/"}, want: deny},
		}},
		{name: "http host", rules: `{http: [{host: "api\\.example\\.com"}]}`, flows: []genFlow{
			{name: "host", http: &flowcheck.HTTP{Method: "GET", Path: "/", Host: "api.example.com"}, want: allow},
			{name: "host with port", http: &flowcheck.HTTP{Method: "GET", Path: "/", Host: "api.example.com:8080"}, want: allow},
			{name: "other host", http: &flowcheck.HTTP{Method: "GET", Path: "/", Host: "evil.example.com"}, want: deny},
			{name: "no host", http: get("/"), want: deny},
		}},
		{name: "http header presence", rules: `{http: [{headers: ["X-Flag"]}]}`, flows: []genFlow{
			{name: "present", http: get("/", "X-Flag", "1"), want: allow},
			{name: "absent", http: get("/"), want: deny},
		}},
		{name: "http header value", rules: `{http: [{headers: ["X-Role: admin"]}]}`, flows: []genFlow{
			{name: "equal", http: get("/", "X-Role", "admin"), want: allow},
			{name: "different", http: get("/", "X-Role", "user"), want: deny},
		}},
		{name: "http headerMatches deny", rules: `{http: [{headerMatches: [{name: X-Token, value: s3cr3t}]}]}`, flows: []genFlow{
			{name: "equal", http: get("/", "X-Token", "s3cr3t"), want: allow},
			{name: "different", http: get("/", "X-Token", "wrong"), want: deny},
			{name: "absent", http: get("/"), want: deny},
		}},
		{name: "http headerMatches LOG", rules: `{http: [{headerMatches: [{name: X-Token, value: s3cr3t, mismatch: LOG}]}]}`, flows: []genFlow{
			{name: "different", http: get("/", "X-Token", "wrong"), want: allow, after: map[string]string{"x-token": "wrong"}},
		}},
		{name: "http headerMatches ADD", rules: `{http: [{headerMatches: [{name: X-Token, value: s3cr3t, mismatch: ADD}]}]}`, flows: []genFlow{
			{name: "absent", http: get("/"), want: allow, after: map[string]string{"x-token": "s3cr3t"}},
		}},
		{name: "http headerMatches DELETE", rules: `{http: [{headerMatches: [{name: X-Token, value: s3cr3t, mismatch: DELETE}]}]}`, flows: []genFlow{
			{name: "different", http: get("/", "X-Token", "wrong"), want: allow, gone: []string{"x-token"}},
			{name: "equal", http: get("/", "X-Token", "s3cr3t"), want: allow, after: map[string]string{"x-token": "s3cr3t"}},
		}},
		{name: "http headerMatches REPLACE", rules: `{http: [{headerMatches: [{name: X-Token, value: s3cr3t, mismatch: REPLACE}]}]}`, flows: []genFlow{
			{name: "different", http: get("/", "X-Token", "wrong"), want: allow, after: map[string]string{"x-token": "s3cr3t"}},
		}},
		{name: "http all fields", rules: `{http: [{method: GET, path: /a, host: h, headers: [X-A], headerMatches: [{name: X-B, value: b}]}]}`, flows: []genFlow{
			{name: "all match", http: &flowcheck.HTTP{Method: "GET", Path: "/a", Host: "h", Headers: map[string]string{"X-A": "1", "X-B": "b"}}, want: allow},
			{name: "one differs", http: &flowcheck.HTTP{Method: "GET", Path: "/a", Host: "h", Headers: map[string]string{"X-A": "1", "X-B": "c"}}, want: deny},
		}},
		{name: "http empty rule", rules: `{http: [{}]}`, flows: []genFlow{
			{name: "anything", http: &flowcheck.HTTP{Method: "DELETE", Path: "/x"}, want: allow},
		}},
		{name: "kafka role produce", rules: `{kafka: [{role: produce, topic: t}]}`, flows: []genFlow{
			{name: "produce t", kafka: kreq("produce", 9, "c", "t"), want: allow},
			{name: "metadata t", kafka: kreq("metadata", 12, "c", "t"), want: allow},
			{name: "fetch t", kafka: kreq("fetch", 12, "c", "t"), want: deny},
			{name: "produce u", kafka: kreq("produce", 9, "c", "u"), want: deny},
		}},
		{name: "kafka role consume", rules: `{kafka: [{role: CONSUME, topic: t}]}`, flows: []genFlow{
			{name: "fetch t", kafka: kreq("fetch", 12, "c", "t"), want: allow},
			{name: "produce t", kafka: kreq("produce", 9, "c", "t"), want: deny},
		}},
		{name: "kafka apiKey", rules: `{kafka: [{apiKey: createtopics}, {apiKey: DESCRIBE_CLUSTER}]}`, flows: []genFlow{
			{name: "createtopics", kafka: kreq("CreateTopics", 5, "c", "t"), want: allow},
			{name: "describecluster", kafka: kreq("describecluster", 0, "c"), want: allow},
			{name: "deletetopics", kafka: kreq("deletetopics", 5, "c", "t"), want: deny},
		}},
		{name: "kafka apiVersion", rules: `{kafka: [{apiKey: produce, apiVersion: "3"}]}`, flows: []genFlow{
			{name: "v3", kafka: kreq("produce", 3, "c", "t"), want: allow},
			{name: "v4", kafka: kreq("produce", 4, "c", "t"), want: deny},
		}},
		{name: "kafka clientID", rules: `{kafka: [{clientID: good}]}`, flows: []genFlow{
			{name: "good", kafka: kreq("fetch", 12, "good", "t"), want: allow},
			{name: "bad", kafka: kreq("fetch", 12, "bad", "t"), want: deny},
		}},
		{name: "kafka topic", rules: `{kafka: [{topic: t}]}`, flows: []genFlow{
			{name: "t", kafka: kreq("produce", 9, "c", "t"), want: allow},
			{name: "t and u", kafka: kreq("produce", 9, "c", "t", "u"), want: deny},
		}},
		{name: "dns matchName", dns: true, rules: `{dns: [{matchName: api.example.com}]}`, flows: []genFlow{
			{name: "name", dns: "api.example.com", want: allow},
			{name: "name with dot", dns: "API.example.com.", want: allow},
			{name: "other", dns: "www.example.com", want: deny},
		}},
		{name: "dns matchPattern", dns: true, rules: `{dns: [{matchPattern: "*.example.com"}]}`, flows: []genFlow{
			{name: "one label", dns: "a.example.com", want: allow},
			{name: "two labels", dns: "a.b.example.com", want: deny},
			{name: "apex", dns: "example.com", want: deny},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: gen}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: ` + tt.rules + "\n"
			port, proto := 80, "TCP"
			if tt.dns {
				doc = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: gen}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: ` + tt.rules + "\n"
				port, proto = 53, "UDP"
			}
			ps, err := policy.Parse("gen.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			var flows []flowcheck.Flow
			for _, g := range tt.flows {
				f := flowcheck.Flow{Name: g.name, From: flowcheck.Peer{Labels: map[string]string{"app": "client"}},
					To: flowcheck.Peer{Labels: map[string]string{"app": "server"}}, Port: port, Protocol: proto, HTTP: g.http, Kafka: g.kafka}
				if g.dns != "" {
					f.DNS = &flowcheck.DNS{Query: g.dns}
				}
				flows = append(flows, f)
			}
			e, got := roundTrip(t, ps, flows)
			for _, g := range tt.flows {
				if got[g.name] != g.want {
					t.Errorf("flow %q: %q; want %s", g.name, got[g.name], g.want)
				}
				h := e.edits[g.name]
				for k, v := range g.after {
					if h[k] != v {
						t.Errorf("flow %q: header %s after ward.http = %q; want %q", g.name, k, h[k], v)
					}
				}
				for _, k := range g.gone {
					if _, ok := h[k]; ok {
						t.Errorf("flow %q: header %s still present after ward.http", g.name, k)
					}
				}
			}
		})
	}
}
