//lint:file-ignore SA1019 the tests check Summary, which ward fills (convert.go).

package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/internal/testenv"
)

var (
	deathstarIP  = "10.0.0.1"
	tiefighterIP = "10.0.0.2"
	xwingIP      = "10.0.0.3"
)

type pods map[string]EndpointInfo

func (p pods) Describe(ip netip.Addr, identity uint32) EndpointInfo {
	if i, ok := p[ip.String()]; ok {
		return i
	}
	return EndpointInfo{Identity: 2, Labels: []string{"reserved:world"}}
}

var starWars = pods{
	deathstarIP:  {ID: 1, Identity: 1001, Namespace: "default", PodName: "deathstar", Labels: []string{"k8s:class=deathstar", "k8s:org=empire"}},
	tiefighterIP: {ID: 2, Identity: 1002, Namespace: "default", PodName: "tiefighter", Labels: []string{"k8s:class=tiefighter", "k8s:org=empire"}},
	xwingIP:      {ID: 3, Identity: 1003, Namespace: "default", PodName: "xwing", Labels: []string{"k8s:class=xwing", "k8s:org=alliance"}},
}

func httpRecord(from, method, path string, v flow.Verdict) *flow.Record {
	r := &flow.Record{Time: time.Now(), Direction: flow.Ingress, Verdict: v, Proto: "http",
		Source:      flow.Endpoint{IP: from, Port: 40000},
		Destination: flow.Endpoint{IP: deathstarIP, Port: 80, Labels: []string{"endpoint:deathstar"}},
		HTTP:        &flow.HTTP{Method: method, Host: "deathstar.default.svc", Path: path, Protocol: "HTTP/1.1", Rule: -1}}
	if v == flow.Denied {
		r.Reason, r.HTTP.Status = "no rule matched", 403
	}
	return r
}

func dnsRecord(query string, v flow.Verdict) *flow.Record {
	return &flow.Record{Time: time.Now(), Direction: flow.Egress, Verdict: v, Proto: "dns",
		Source: flow.Endpoint{IP: tiefighterIP, Port: 5353}, Destination: flow.Endpoint{IP: "10.0.0.53", Port: 53},
		L4: &flow.L4{Protocol: "UDP"}, DNS: &flow.DNS{Query: query, QType: "A", RCode: "NOERROR", IPs: []string{"192.0.2.1"}, TTL: 30}}
}

func TestConvert(t *testing.T) {
	f := Convert(httpRecord(tiefighterIP, "PUT", "/v1/exhaust-port", flow.Denied), "node1", starWars)
	if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED {
		t.Errorf("verdict %v drop reason %v; want DROPPED POLICY_DENIED", f.GetVerdict(), f.GetDropReasonDesc())
	}
	if f.GetType() != flowpb.FlowType_L7 || f.GetEventType().GetType() != msgTypeAccessLog || f.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS {
		t.Errorf("type %v event %v direction %v; want L7, 129, INGRESS", f.GetType(), f.GetEventType(), f.GetTrafficDirection())
	}
	h := f.GetL7().GetHttp()
	if h.GetMethod() != "PUT" || h.GetUrl() != "http://deathstar.default.svc/v1/exhaust-port" || h.GetCode() != 403 || h.GetProtocol() != "HTTP/1.1" {
		t.Errorf("http %v", h)
	}
	if s, d := f.GetSource(), f.GetDestination(); s.GetPodName() != "tiefighter" || s.GetIdentity() != 1002 || d.GetPodName() != "deathstar" || d.GetID() != 1 || d.GetNamespace() != "default" || len(d.GetLabels()) != 2 {
		t.Errorf("endpoints %v -> %v", s, d)
	}
	if f.GetIP().GetSource() != tiefighterIP || f.GetL4().GetTCP().GetDestinationPort() != 80 || f.GetL4().GetTCP().GetSourcePort() != 40000 {
		t.Errorf("ip %v l4 %v", f.GetIP(), f.GetL4())
	}
	if f.GetIsReply() == nil || f.GetIsReply().GetValue() || f.GetNodeName() != "node1" || f.GetSummary() == "" {
		t.Errorf("is_reply %v node %q summary %q", f.GetIsReply(), f.GetNodeName(), f.GetSummary())
	}
	d := Convert(dnsRecord("api.github.test", flow.Allowed), "node1", starWars)
	if q := d.GetL7().GetDns(); q.GetQuery() != "api.github.test." || q.GetIps()[0] != "192.0.2.1" || d.GetL4().GetUDP().GetDestinationPort() != 53 || d.GetVerdict() != flowpb.Verdict_FORWARDED {
		t.Errorf("dns flow %v", d)
	}
	if d.GetDestination().GetIdentity() != 2 || d.GetDestination().GetLabels()[0] != "reserved:world" {
		t.Errorf("unknown destination %v; want world", d.GetDestination())
	}
	a := Convert(&flow.Record{Verdict: flow.Audited, Source: flow.Endpoint{IP: xwingIP}, Destination: flow.Endpoint{IP: deathstarIP, Port: 80}, L4: &flow.L4{Protocol: "TCP"}}, "n", nil)
	if a.GetVerdict() != flowpb.Verdict_AUDIT || a.GetType() != flowpb.FlowType_L3_L4 {
		t.Errorf("audit flow %v", a)
	}
}

// serve starts a Server on temporary sockets and returns an Observer
// client.
func serve(t *testing.T, h *Hub) (*Server, observerpb.ObserverClient) {
	t.Helper()
	dir := t.TempDir()
	s := &Server{Hub: h, HubbleSocket: filepath.Join(dir, "hubble.sock"), FlowSocket: filepath.Join(dir, "flows.sock")}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	cc, err := grpc.NewClient("unix://"+s.HubbleSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return s, observerpb.NewObserverClient(cc)
}

func collect(t *testing.T, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest) ([]*flowpb.Flow, error) {
	t.Helper()
	st, err := c.GetFlows(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var out []*flowpb.Flow
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r.GetFlow())
	}
}

func summary(fs []*flowpb.Flow) []string {
	var out []string
	for _, f := range fs {
		s := f.GetVerdict().String() + " " + f.GetSource().GetPodName()
		if h := f.GetL7().GetHttp(); h != nil {
			s += " " + h.GetMethod()
		}
		if d := f.GetL7().GetDns(); d != nil {
			s += " " + d.GetQuery()
		}
		out = append(out, s)
	}
	return out
}

func TestGetFlows(t *testing.T) {
	h := NewHub("node1", 8, starWars, nil)
	_, c := serve(t, h)
	h.Emit(httpRecord(tiefighterIP, "POST", "/v1/request-landing", flow.Allowed))
	h.Emit(httpRecord(tiefighterIP, "PUT", "/v1/exhaust-port", flow.Denied))
	h.Emit(httpRecord(xwingIP, "POST", "/v1/request-landing", flow.Denied))
	h.Emit(dnsRecord("api.github.test", flow.Allowed))

	for _, tc := range []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want []string
	}{
		{"last 2", &observerpb.GetFlowsRequest{Number: 2}, []string{"DROPPED xwing POST", "FORWARDED tiefighter api.github.test."}},
		{"first 1", &observerpb.GetFlowsRequest{Number: 1, First: true}, []string{"FORWARDED tiefighter POST"}},
		{"all", &observerpb.GetFlowsRequest{}, []string{"FORWARDED tiefighter POST", "DROPPED tiefighter PUT", "DROPPED xwing POST", "FORWARDED tiefighter api.github.test."}},
		{"verdict", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}},
			[]string{"DROPPED tiefighter PUT", "DROPPED xwing POST"}},
		{"method and pod", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{HttpMethod: []string{"post"}, SourcePod: []string{"default/tie"}}}},
			[]string{"FORWARDED tiefighter POST"}},
		{"label", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{SourceLabel: []string{"k8s:org=alliance"}}}},
			[]string{"DROPPED xwing POST"}},
		{"label without source, identity", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{SourceLabel: []string{"class=tiefighter"}, DestinationIdentity: []uint32{1001}}}},
			[]string{"FORWARDED tiefighter POST", "DROPPED tiefighter PUT"}},
		{"path", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{HttpPath: []string{"^/v1/exhaust"}}}},
			[]string{"DROPPED tiefighter PUT"}},
		{"protocol and dns query", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{Protocol: []string{"dns"}, DnsQuery: []string{`github\.test`}}}},
			[]string{"FORWARDED tiefighter api.github.test."}},
		{"blacklist, namespace", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{SourcePod: []string{"default/"}}}, Blacklist: []*flowpb.FlowFilter{{Protocol: []string{"http"}}}},
			[]string{"FORWARDED tiefighter api.github.test."}},
		{"status 403, either filter", &observerpb.GetFlowsRequest{Number: 10, Whitelist: []*flowpb.FlowFilter{{HttpStatusCode: []string{"4+"}, SourcePod: []string{"xwing"}}, {DnsQuery: []string{"api"}}}},
			[]string{"DROPPED xwing POST", "FORWARDED tiefighter api.github.test."}},
	} {
		got, err := collect(t, c, tc.req)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if g := summary(got); !equal(g, tc.want) {
			t.Errorf("%s: got %q; want %q", tc.name, g, tc.want)
		}
	}
	_, err := collect(t, c, &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourceFqdn: []string{"x"}}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unsupported filter: err %v; want InvalidArgument", err)
	}
	st, err := c.ServerStatus(context.Background(), &observerpb.ServerStatusRequest{})
	if err != nil || st.GetNumFlows() != 4 || st.GetMaxFlows() != 8 || st.GetSeenFlows() != 4 {
		t.Errorf("ServerStatus = %v, %v; want 4 of 8, 4 seen", st, err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFollow: a follower gets the last N, then each new matching flow, and
// a LostEvent when the ring overwrote flows it had not read.
func TestFollow(t *testing.T) {
	h := NewHub("node1", 4, starWars, nil)
	_, c := serve(t, h)
	h.Emit(httpRecord(tiefighterIP, "POST", "/v1/request-landing", flow.Allowed))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1, Follow: true,
		Whitelist: []*flowpb.FlowFilter{{SourcePod: []string{"default/tiefighter"}}}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil || r.GetFlow().GetL7().GetHttp().GetMethod() != "POST" {
		t.Fatalf("first = %v, %v; want the POST", r, err)
	}
	h.Emit(httpRecord(xwingIP, "POST", "/v1/request-landing", flow.Denied)) // filtered out
	h.Emit(httpRecord(tiefighterIP, "PUT", "/v1/exhaust-port", flow.Denied))
	r, err = st.Recv()
	if err != nil || r.GetFlow().GetL7().GetHttp().GetMethod() != "PUT" {
		t.Fatalf("followed = %v, %v; want the PUT", r, err)
	}
}

// TestRing: the ring keeps the last capacity flows.
func TestRing(t *testing.T) {
	h := NewHub("node1", 2, starWars, nil)
	for range 5 {
		h.Emit(httpRecord(tiefighterIP, "GET", "/", flow.Allowed))
	}
	if lo, hi, _ := h.window(); lo != 3 || hi != 5 {
		t.Fatalf("window [%d,%d); want [3,5)", lo, hi)
	}
	if h.at(2) != nil || h.at(3) == nil || h.at(4) == nil || h.at(5) != nil {
		t.Errorf("at(2..5) = %v %v %v %v; want nil, flow, flow, nil", h.at(2), h.at(3), h.at(4), h.at(5))
	}
}

// TestShipper: records shipped over the flow socket reach the ring; with
// the receiver gone Emit does not block, records are dropped and counted,
// and the count reaches the receiver once it is back.
func TestShipper(t *testing.T) {
	h := NewHub("node1", 64, starWars, nil)
	dir := t.TempDir()
	sock := filepath.Join(dir, "flows.sock")
	start := func() func() {
		s := &Server{Hub: h, FlowSocket: sock}
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		return func() { cancel(); <-done }
	}
	stop := start()
	sh := flow.NewShipper(sock, 8)
	sh.WriteTimeout = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sh.Run(ctx)
	sh.Emit(httpRecord(tiefighterIP, "POST", "/v1/request-landing", flow.Allowed))
	waitFor(t, "the shipped record", func() bool { return h.Seen() == 1 })
	stop()

	// The receiver is gone: Emit never blocks; what cannot be shipped is
	// dropped.
	for range 100 {
		sh.Emit(httpRecord(tiefighterIP, "PUT", "/v1/exhaust-port", flow.Denied))
	}
	waitFor(t, "the sender to drop", func() bool { return sh.Dropped() >= 92 })
	stop = start()
	defer stop()
	waitFor(t, "a record after the restart", func() bool {
		sh.Emit(httpRecord(xwingIP, "POST", "/v1/request-landing", flow.Denied))
		time.Sleep(10 * time.Millisecond)
		return h.Seen() > 1
	})
	waitFor(t, "the drops reported", func() bool { return h.Lost() == sh.Dropped() && h.Lost() > 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHubbleCLI: the real hubble CLI (build/bin/hubble) reads the ring
// through the Observer socket: observe with a filter, and status.
func TestHubbleCLI(t *testing.T) {
	hubble := testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	h := NewHub("node1", 8, starWars, nil)
	s, _ := serve(t, h)
	h.Emit(httpRecord(tiefighterIP, "POST", "/v1/request-landing", flow.Allowed))
	h.Emit(httpRecord(tiefighterIP, "PUT", "/v1/exhaust-port", flow.Denied))
	h.Emit(&flow.Record{Time: time.Now(), Direction: flow.Egress, Verdict: flow.Denied, Proto: "kafka",
		Source: flow.Endpoint{IP: xwingIP, Port: 40001}, Destination: flow.Endpoint{IP: deathstarIP, Port: 9092},
		Kafka: &flow.Kafka{APIKey: 0, APIKeyName: "Produce", APIVersion: 9, CorrelationID: 4, Topics: []string{"deathstar-plans"}, ErrorCode: 29}})
	server := "unix://" + s.HubbleSocket
	out, err := exec.Command(hubble, "observe", "--server", server, "-o", "json", "--last", "10", "--protocol", "kafka").CombinedOutput()
	if err != nil {
		t.Fatalf("hubble observe: %v\n%s", err, out)
	}
	var got struct {
		Flow struct {
			Verdict string `json:"verdict"`
			L7      struct {
				Kafka struct {
					APIKey    string `json:"api_key"`
					Topic     string `json:"topic"`
					ErrorCode int    `json:"error_code"`
				} `json:"kafka"`
			} `json:"l7"`
			Source struct {
				PodName string `json:"pod_name"`
			} `json:"source"`
		} `json:"flow"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &got); err != nil {
		t.Fatalf("hubble observe --protocol kafka: %v\n%s", err, out)
	}
	if k := got.Flow.L7.Kafka; got.Flow.Verdict != "DROPPED" || k.APIKey != "produce" || k.Topic != "deathstar-plans" || k.ErrorCode != 29 || got.Flow.Source.PodName != "xwing" {
		t.Errorf("kafka flow = %s", out)
	}
	out, err = exec.Command(hubble, "observe", "--server", server, "--last", "10").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "default/tiefighter:40000") || !strings.Contains(string(out), "DROPPED") {
		t.Errorf("hubble observe (compact): %v\n%s", err, out)
	}
	out, err = exec.Command(hubble, "status", "--server", server).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3/8") {
		t.Errorf("hubble status: %v\n%s", err, out)
	}
}
