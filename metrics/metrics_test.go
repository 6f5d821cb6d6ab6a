package metrics

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/internal/testenv"
)

func testGauges() Gauges {
	return Gauges{
		FQDNNames: 2, FQDNIPs: 3, FQDNZombies: 1,
		Identities:         map[string]int{"reserved": 9, "endpoint": 3, "fqdn": 1},
		PolicyImportErrors: 1,
		XDS:                []XDSType{{Type: "listener", Acked: 1}, {Type: "network_policy", Acked: 2, Rejected: 1, NACKed: true}},
		EnvoyStarts:        3,
		DNSQueries:         5, DNSAllowed: 3, DNSDenied: 2,
		FlowsSeen: 7, FlowsLost: 4,
	}
}

// scrape serves m on loopback and returns the exposition.
func scrape(t *testing.T, m *Metrics) []byte {
	t.Helper()
	srv, err := Listen(m, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return b
}

// value returns the value of the sample of name with the given labels.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range fam.GetMetric() {
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
	t.Fatalf("%s%v: no sample", name, labels)
	return 0
}

// TestExposition: verdicts counted from records by direction, protocol,
// verdict and a bounded reason; the agent's state read at scrape time.
// The exposition parses (expfmt) and passes the real `promtool check
// metrics` when build/bin/promtool is built (scripts/setup.d/70-hubble.sh).
func TestExposition(t *testing.T) {
	m := New(testGauges)
	rec := func(dir flow.Direction, v flow.Verdict, reason string, mod func(*flow.Record)) {
		r := &flow.Record{Time: time.Now(), Direction: dir, Verdict: v, Reason: reason}
		mod(r)
		m.Observe(r)
	}
	http := func(r *flow.Record) { r.Proto, r.HTTP = "http", &flow.HTTP{Method: "PUT", Path: "/secret?token=x"} }
	rec(flow.Ingress, flow.Allowed, "", http)
	rec(flow.Ingress, flow.Denied, "no rule matched for PUT /secret", http)
	rec(flow.Ingress, flow.Denied, "no rule matched for PUT /other", http)
	rec(flow.Egress, flow.Denied, "no policy for the endpoint", func(r *flow.Record) { r.Proto, r.Kafka = "kafka", &flow.Kafka{} })
	rec(flow.Egress, flow.Error, "upstream: dial 10.0.0.1:53 refused", func(r *flow.Record) { r.Proto, r.DNS = "dns", &flow.DNS{Query: "x."} })
	b := scrape(t, m)

	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, b)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ward_policy_verdicts_total", map[string]string{"direction": "ingress", "protocol": "http", "verdict": "denied", "reason": "policy_denied"}, 2},
		{"ward_policy_verdicts_total", map[string]string{"direction": "ingress", "protocol": "http", "verdict": "allowed", "reason": "none"}, 1},
		{"ward_policy_verdicts_total", map[string]string{"direction": "egress", "protocol": "kafka", "verdict": "denied", "reason": "no_policy"}, 1},
		{"ward_policy_verdicts_total", map[string]string{"direction": "egress", "protocol": "dns", "verdict": "error", "reason": "error"}, 1},
		{"ward_l7_requests_total", map[string]string{"protocol": "http", "verdict": "denied"}, 2},
		{"ward_l7_requests_total", map[string]string{"protocol": "kafka", "verdict": "denied"}, 1},
		{"ward_fqdn_cache_entries", map[string]string{"kind": "ips"}, 3},
		{"ward_identities", map[string]string{"type": "endpoint"}, 3},
		{"ward_identities", map[string]string{"type": "cidr"}, 0},
		{"ward_policy_import_errors", nil, 1},
		{"ward_xds_resources", map[string]string{"type": "network_policy", "state": "rejected"}, 1},
		{"ward_xds_nacked", map[string]string{"type": "network_policy"}, 1},
		{"ward_xds_nacked", map[string]string{"type": "listener"}, 0},
		{"ward_envoy_restarts_total", nil, 2},
		{"ward_dns_queries_total", map[string]string{"outcome": "denied"}, 2},
		{"ward_flows_lost_total", nil, 4},
	} {
		if got := value(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v; want %v", c.name, c.labels, got, c.want)
		}
	}
	// Label values never come from traffic.
	for _, leak := range []string{"/secret", "token", "10.0.0.1", "PUT"} {
		if bytes.Contains(b, []byte(leak)) {
			t.Errorf("exposition contains %q", leak)
		}
	}

	promtool := testenv.File(t, "build/bin/promtool", "run scripts/setup.d/70-hubble.sh (builds promtool from tools/promtool)")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestListenLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:9962", ":9962", "192.0.2.1:9962", "9962"} {
		if _, err := Listen(New(nil), addr, nil); err == nil {
			t.Errorf("Listen(%q) accepted a non-loopback address", addr)
		}
	}
}
