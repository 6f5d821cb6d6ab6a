// Package observe runs the real hubble CLI and promtool against wardd's
// flow stream: pods in network namespaces, the agent with the BPF
// datapath, Envoy and the DNS proxy (conformance/node), the seed's Star
// Wars and mediabot scenarios; `hubble observe --server
// unix://<state>/hubble.sock` sees the flows with Hubble's fields, its
// filters and --follow work, and the metrics pass `promtool check metrics`.
package observe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/monitor"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

const mediabotPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: fqdn
spec:
  endpointSelector:
    matchLabels: {class: mediabot}
  egress:
  - toEndpoints:
    - matchLabels: {k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchPattern: "*.github.test"
`

// hubbleFlow is the part of `hubble observe -o json`'s lines the tests
// read (Hubble's JSON names).
type hubbleFlow struct {
	Flow struct {
		Verdict    string `json:"verdict"`
		DropReason string `json:"drop_reason_desc"`
		Direction  string `json:"traffic_direction"`
		Type       string `json:"Type"`
		IP         struct {
			Source      string `json:"source"`
			Destination string `json:"destination"`
		} `json:"IP"`
		Source      hubbleEndpoint `json:"source"`
		Destination hubbleEndpoint `json:"destination"`
		L4          struct {
			TCP *struct {
				DestinationPort int `json:"destination_port"`
			} `json:"TCP"`
			UDP *struct {
				DestinationPort int `json:"destination_port"`
			} `json:"UDP"`
		} `json:"l4"`
		L7 *struct {
			Type string `json:"type"`
			HTTP *struct {
				Code     int    `json:"code"`
				Method   string `json:"method"`
				URL      string `json:"url"`
				Protocol string `json:"protocol"`
			} `json:"http"`
			DNS *struct {
				Query string   `json:"query"`
				IPs   []string `json:"ips"`
				Rcode int      `json:"rcode"`
			} `json:"dns"`
		} `json:"l7"`
		IsReply *bool  `json:"is_reply"`
		Summary string `json:"Summary"`
	} `json:"flow"`
	NodeName string `json:"node_name"`
}

type hubbleEndpoint struct {
	ID        int      `json:"ID"`
	Identity  int      `json:"identity"`
	Namespace string   `json:"namespace"`
	PodName   string   `json:"pod_name"`
	Labels    []string `json:"labels"`
}

func (f *hubbleFlow) String() string {
	b, _ := json.Marshal(f)
	return string(b)
}

func parseFlows(t *testing.T, out []byte) []*hubbleFlow {
	t.Helper()
	var fs []*hubbleFlow
	for line := range bytes.Lines(out) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		f := &hubbleFlow{}
		if err := json.Unmarshal(line, f); err != nil {
			t.Fatalf("hubble output line %q: %v", line, err)
		}
		fs = append(fs, f)
	}
	return fs
}

func TestHubbleObserve(t *testing.T) {
	hubble := testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	promtool := testenv.File(t, "build/bin/promtool", "run scripts/setup.d/70-hubble.sh (builds promtool from tools/promtool)")
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}},
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot", "org": "empire"}})
	pods := n.Pods
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	zone := cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
@ IN A 192.0.2.1
api IN A 192.0.2.2
`}
	kd := pods["kube-dns"]
	cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "deathstar.yaml", string(b))
	n.WritePolicy(t, "fqdn.yaml", mediabotPolicy)
	n.Config.Metrics.Address = "127.0.0.1:0"
	n.Start(t, 41000, 9410)
	server := "unix://" + filepath.Join(n.StateDir, "hubble.sock")

	c, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	ds := pods["deathstar"]
	url := "http://" + ds.IP.String()
	curl := func(from, method, path string) string {
		return n.Curl(c, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	node.Eventually(t, "Envoy to deny tiefighter's PUT", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Fatalf("tiefighter POST = %q; want Ship landed 200", got)
	}
	mb := []string{"ip", "netns", "exec", pods["mediabot"].NetNS}
	dnsServer := netip.AddrPortFrom(kd.IP, 53)
	node.Eventually(t, "the DNS proxy to refuse github.test", func() bool {
		out, _ := pods["mediabot"].Run(c, "dig", "@"+kd.IP.String(), "+tries=1", "+time=2", "github.test.")
		return cdns.ParseDig(out).Status == "REFUSED"
	})
	if r := cdns.Dig(t, mb, dnsServer, "api.github.test."); r.Status != "NOERROR" {
		t.Fatalf("dig api.github.test = %s\n%s", r.Status, r.Output)
	}

	observe := func(args ...string) []*hubbleFlow {
		t.Helper()
		cmd := exec.CommandContext(c, hubble, append([]string{"observe", "--server", server, "-o", "json"}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			stderr := ""
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("hubble observe %v: %v\n%s", args, err, stderr)
		}
		return parseFlows(t, out)
	}
	find := func(fs []*hubbleFlow, pred func(*hubbleFlow) bool) *hubbleFlow {
		for _, f := range fs {
			if pred(f) {
				return f
			}
		}
		return nil
	}
	httpFlow := func(method, verdict string) func(*hubbleFlow) bool {
		return func(f *hubbleFlow) bool {
			return f.Flow.L7 != nil && f.Flow.L7.HTTP != nil && f.Flow.L7.HTTP.Method == method && f.Flow.Verdict == verdict &&
				f.Flow.Source.PodName == "tiefighter"
		}
	}
	var all []*hubbleFlow
	node.Eventually(t, "hubble observe to show the POST, the PUT and the DNS query", func() bool {
		all = observe("--last", "1000")
		return find(all, httpFlow("POST", "FORWARDED")) != nil && find(all, httpFlow("PUT", "DROPPED")) != nil &&
			find(all, func(f *hubbleFlow) bool {
				return f.Flow.L7 != nil && f.Flow.L7.DNS != nil && f.Flow.L7.DNS.Query == "api.github.test."
			}) != nil
	})

	// The L7 flows carry what Hubble users read.
	put := find(all, httpFlow("PUT", "DROPPED"))
	tf := pods["tiefighter"]
	if h := put.Flow.L7.HTTP; h.Code != 403 || !strings.HasSuffix(h.URL, "/v1/exhaust-port") || h.Protocol != "HTTP/1.1" || put.Flow.L7.Type != "REQUEST" {
		t.Errorf("PUT http = %+v, l7 type %s; want 403 .../v1/exhaust-port HTTP/1.1 REQUEST", h, put.Flow.L7.Type)
	}
	if f := put.Flow; f.Direction != "INGRESS" || f.Type != "L7" || f.DropReason != "POLICY_DENIED" || f.IP.Source != tf.IP.String() || f.IP.Destination != ds.IP.String() ||
		f.L4.TCP == nil || f.L4.TCP.DestinationPort != 80 || f.IsReply == nil || *f.IsReply || f.Summary == "" || put.NodeName != n.Config.Node {
		t.Errorf("PUT flow = %s", put)
	}
	src, dst := put.Flow.Source, put.Flow.Destination
	if src.Namespace != "default" || src.Identity == 0 || !contains(src.Labels, "k8s:class=tiefighter") {
		t.Errorf("PUT source = %+v; want tiefighter in default with its identity and labels", src)
	}
	if dst.PodName != "deathstar" || dst.ID == 0 || dst.Identity == 0 || dst.Identity == src.Identity || !contains(dst.Labels, "k8s:class=deathstar") {
		t.Errorf("PUT destination = %+v; want deathstar with its endpoint id, identity and labels", dst)
	}
	post := find(all, httpFlow("POST", "FORWARDED"))
	if h := post.Flow.L7.HTTP; !strings.HasSuffix(h.URL, "/v1/request-landing") || post.Flow.DropReason != "" && post.Flow.DropReason != "DROP_REASON_UNKNOWN" {
		t.Errorf("POST flow = %s", post)
	}
	q := find(all, func(f *hubbleFlow) bool {
		return f.Flow.L7 != nil && f.Flow.L7.DNS != nil && f.Flow.L7.DNS.Query == "api.github.test."
	})
	if f := q.Flow; f.Verdict != "FORWARDED" || f.Direction != "EGRESS" || f.Source.PodName != "mediabot" || !contains(f.L7.DNS.IPs, "192.0.2.2") ||
		f.L4.UDP == nil || f.L4.UDP.DestinationPort != 53 || f.Destination.PodName != "kube-dns" {
		t.Errorf("DNS flow = %s", q)
	}
	if refused := find(all, func(f *hubbleFlow) bool {
		return f.Flow.L7 != nil && f.Flow.L7.DNS != nil && f.Flow.L7.DNS.Query == "github.test."
	}); refused == nil || refused.Flow.Verdict != "DROPPED" || refused.Flow.L7.DNS.Rcode != 5 {
		t.Errorf("refused DNS flow = %v; want DROPPED with rcode 5 (REFUSED)", refused)
	}

	// --last N, filters.
	if got := observe("--last", "1"); len(got) != 1 {
		t.Errorf("--last 1: %d flows", len(got))
	}
	puts := observe("--last", "1000", "--http-method", "PUT")
	if len(puts) == 0 {
		t.Error("--http-method PUT: no flow")
	}
	for _, f := range puts {
		if f.Flow.L7 == nil || f.Flow.L7.HTTP == nil || f.Flow.L7.HTTP.Method != "PUT" {
			t.Errorf("--http-method PUT: %s", f)
		}
	}
	drops := observe("--last", "1000", "--verdict", "DROPPED", "--from-pod", "default/tiefighter")
	if len(drops) == 0 {
		t.Error("--verdict DROPPED --from-pod default/tiefighter: no flow")
	}
	for _, f := range drops {
		if f.Flow.Verdict != "DROPPED" || f.Flow.Source.PodName != "tiefighter" {
			t.Errorf("--verdict DROPPED --from-pod default/tiefighter: %s", f)
		}
	}
	if got := observe("--last", "1000", "--protocol", "dns", "--from-label", "class=mediabot"); len(got) < 2 || find(got, func(f *hubbleFlow) bool { return f.Flow.L7 == nil || f.Flow.L7.DNS == nil }) != nil {
		t.Errorf("--protocol dns --from-label class=mediabot: %d flows %v", len(got), got)
	}

	// --follow sees a new request: a PUT whose path no earlier flow has.
	path := fmt.Sprintf("/v1/follow-%d", time.Now().UnixNano())
	fc, fstop := context.WithCancel(c)
	defer fstop()
	cmd := exec.CommandContext(fc, hubble, "observe", "--server", server, "-o", "json", "--follow", "--http-path", path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait() //nolint:errcheck // killed by fstop
	lines := make(chan []byte)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- append([]byte(nil), sc.Bytes()...)
		}
		close(lines)
	}()
	// The follower may connect after the request: repeat it until one
	// is seen (each is a new flow).
	var seen *hubbleFlow
	node.Eventually(t, "hubble observe --follow to see a new request", func() bool {
		if got := curl("tiefighter", "PUT", path); got != "Access denied 403" {
			t.Logf("PUT %s = %q", path, got)
		}
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hubble observe --follow exited: %s", stderr.String())
			}
			fs := parseFlows(t, l)
			seen = fs[0]
			return true
		case <-time.After(time.Second):
			return false
		}
	})
	if seen.Flow.L7 == nil || seen.Flow.L7.HTTP == nil || !strings.HasSuffix(seen.Flow.L7.HTTP.URL, path) || seen.Flow.Verdict != "DROPPED" {
		t.Errorf("followed flow = %s", seen)
	}
	fstop()

	// Metrics: scraped from the loopback address, checked by promtool.
	addr := n.Agent.MetricsAddr()
	if addr == "" {
		t.Fatal("no metrics address")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	expo, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	pc := exec.Command(promtool, "check", "metrics")
	pc.Stdin = bytes.NewReader(expo)
	if out, err := pc.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(expo))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"ward_l7_requests_total", map[string]string{"protocol": "http", "verdict": "denied"}, 2},
		{"ward_l7_requests_total", map[string]string{"protocol": "http", "verdict": "allowed"}, 1},
		{"ward_policy_verdicts_total", map[string]string{"direction": "ingress", "protocol": "http", "verdict": "denied", "reason": "policy_denied"}, 2},
		{"ward_l7_requests_total", map[string]string{"protocol": "dns", "verdict": "denied"}, 1},
		{"ward_dns_queries_total", map[string]string{"outcome": "allowed"}, 1},
		{"ward_dns_queries_total", map[string]string{"outcome": "denied"}, 1},
		{"ward_fqdn_cache_entries", map[string]string{"kind": "names"}, 1},
		{"ward_identities", map[string]string{"type": "endpoint"}, 5},
		{"ward_xds_resources", map[string]string{"type": "network_policy", "state": "acked"}, 5},
		{"ward_flows_seen_total", nil, 4},
	} {
		if got := sample(fams, m.name, m.labels); got < m.min {
			t.Errorf("%s%v = %v; want at least %v", m.name, m.labels, got, m.min)
		}
	}
	if got := sample(fams, "ward_flows_lost_total", nil); got != 0 {
		t.Errorf("ward_flows_lost_total = %v; want 0", got)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// sample is the value of name's sample with labels; -1 when absent.
func sample(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
next:
	for _, m := range fams[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if got[k] != v {
				continue next
			}
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	return -1
}

// TestFlowsWithoutWardd: with wardd gone (Envoy left running, as in a
// rolling restart) requests keep being decided at once; the filter's
// records are dropped and counted, and the next wardd on the flow socket
// hears of the loss: every record of the downtime is either received or
// counted lost. (Through the agent's stack with a hand-made listener: a
// stopped agent removes the datapath's proxy routing, so pods could not
// reach Envoy meanwhile.)
func TestFlowsWithoutWardd(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	ul, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go http.Serve(ul, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "landed") })) //nolint:errcheck // until the test ends
	t.Cleanup(func() { ul.Close() })
	port := stack.FreePort(t)
	flows := s.Agent.FlowSocket()
	cfg, _ := json.Marshal(map[string]any{"xds_socket": s.Socket, "node": s.Node, "endpoint": "deathstar", "port": 80, "remote_identity": 1000, "flow_socket": flows})
	l, err := xds.HTTPListener{Name: "deathstar", Address: "127.0.0.1", Port: port, Cluster: "up",
		Filters: []xds.ModuleFilter{{Name: "ward.http", Config: cfg}}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	s.PushEnvoy(t, xds.EnvoyResources{Listeners: []types.Resource{l},
		Clusters: []types.Resource{xds.StaticCluster("up", "127.0.0.1", uint32(ul.Addr().(*net.TCPAddr).Port), false)}})
	s.PushPolicy(t, []*npds.NetworkPolicy{{Name: "deathstar", EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{
			L7: npds.HTTP(l7.HTTPRule{Method: "POST", Path: "/v1/request-landing"}),
		}}}}}}, []*npds.NetworkPolicyHosts{{Identity: 1000, HostAddresses: []string{"10.0.0.2"}}})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	put := func(path string) string {
		out, err := exec.Command("curl", "-s", "--max-time", "5", "-X", "PUT", "-w", " %{http_code}", url+path).Output()
		if err != nil {
			return "error"
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	if got := put("/v1/exhaust-port"); got != "Access denied 403" {
		t.Fatalf("PUT = %q; want Access denied 403", got)
	}
	node.Eventually(t, "the PUT in the agent's flow ring", func() bool { return s.Agent.Flows().Seen() > 0 })

	s.StopXDS()
	const down = 20
	for i := range down {
		if got := put(fmt.Sprintf("/v1/down-%d", i)); got != "Access denied 403" {
			t.Fatalf("PUT %d with wardd gone = %q; want Access denied 403", i, got)
		}
	}
	// The next wardd's flow socket.
	hub := monitor.NewHub("next", 0, nil, nil)
	var mu sync.Mutex
	var paths []string
	hub.OnRecord(func(r *flow.Record) {
		mu.Lock()
		defer mu.Unlock()
		paths = append(paths, r.HTTP.Path)
	})
	srv := &monitor.Server{Hub: hub, FlowSocket: flows}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	afters := 0
	node.Eventually(t, "a request after wardd is back on the flow socket", func() bool {
		afters++
		put("/v1/after")
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(paths, "/v1/after")
	})
	mu.Lock()
	shipped := 0
	for _, p := range paths {
		if strings.HasPrefix(p, "/v1/down-") {
			shipped++
		}
	}
	mu.Unlock()
	t.Logf("downtime records: %d lost, %d shipped after the restart (%d requests to see it back)", hub.Lost(), shipped, afters)
	// Every downtime record is shipped or counted lost; the lost count may
	// also hold records of the requests sent before the shipper was back
	// (all but the last /v1/after).
	if lost := int(hub.Lost()); lost == 0 || lost+shipped < down || lost+shipped > down+afters-1 {
		t.Errorf("downtime records: %d lost + %d received; want %d (plus at most %d /v1/after), some lost", lost, shipped, down, afters-1)
	}
}
