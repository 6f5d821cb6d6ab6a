package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/policy"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadConfigDNS: the dns block of the node config reaches Config.DNS
// under Cilium's option names; unknown and invalid options are refused.
func TestLoadConfigDNS(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, `
dns:
  rejectResponseCode: nameError
  minTTL: 1h
  maxIPsPerHostname: 50
  maxDeferredConnectionDeletes: 200
  proxyResponseMaxDelay: 250ms
  concurrencyLimit: 64
`))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	want := dns.Config{RejectNXDomain: true, MinTTL: time.Hour, MaxIPsPerName: 50, MaxZombies: 200, UpdateTimeout: 250 * time.Millisecond, MaxInFlight: 64}
	if c.DNS != want {
		t.Errorf("DNS = %+v; want %+v", c.DNS, want)
	}
	for _, tc := range []struct{ name, body, want string }{
		{name: "unknown option", body: "dns: {dnsRejectResponseCode: nameError}\n", want: `unknown field "dnsRejectResponseCode"`},
		{name: "bad reject code", body: "dns: {rejectResponseCode: servfail}\n", want: "rejectResponseCode"},
		{name: "minTTL above maxTTL", body: "dns: {minTTL: 2h, maxTTL: 1h}\n", want: "dns: MinTTL 2h0m0s is above MaxTTL 1h0m0s"},
		{name: "negative", body: "dns: {maxIPsPerHostname: -1}\n", want: "dns: MaxIPsPerName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadConfig(%q) = %v; want an error containing %q", tc.body, err, tc.want)
			}
		})
	}
}

// TestLoadConfigPorts: endpoints' named ports are validated as Kubernetes
// validates containerPorts, each error naming its field.
func TestLoadConfigPorts(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, `
endpoints:
- name: web
  id: 1
  ips: [10.0.0.2]
  ports:
  - {name: http, port: 80}
  - {name: dns, port: 53, protocol: UDP}
`))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	want := []ContainerPort{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: "UDP"}}
	if d := cmp.Diff(want, c.Endpoints[0].Ports); d != "" {
		t.Errorf("ports (-want +got):\n%s", d)
	}
	for _, tc := range []struct{ name, ports, want string }{
		{name: "upper case", ports: "{name: HTTP, port: 80}", want: `endpoints[0].ports[0].name "HTTP"`},
		{name: "too long", ports: "{name: a-very-long-port-name, port: 80}", want: "endpoints[0].ports[0].name"},
		{name: "digits only", ports: "{name: '8080', port: 80}", want: "endpoints[0].ports[0].name"},
		{name: "double dash", ports: "{name: a--b, port: 80}", want: "endpoints[0].ports[0].name"},
		{name: "no port", ports: "{name: http}", want: "endpoints[0].ports[0].port is required"},
		{name: "bad protocol", ports: "{name: http, port: 80, protocol: ICMP}", want: "endpoints[0].ports[0]: protocol \"ICMP\""},
		{name: "twice", ports: "{name: http, port: 80}, {name: http, port: 81}", want: `endpoints[0].ports[1].name "http" is used twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := "endpoints:\n- {name: web, id: 1, ips: [10.0.0.2], ports: [" + tc.ports + "]}\n"
			_, err := LoadConfig(writeConfig(t, body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadConfig(%q) = %v; want an error containing %q", body, err, tc.want)
			}
		})
	}
}

// TestEngineNamedPorts: a policy's named port resolves to the port the
// selected endpoint declares in the node config.
func TestEngineNamedPorts(t *testing.T) {
	cfg := Config{PolicyDir: t.TempDir(), Endpoints: []Endpoint{
		{Name: "web", ID: 1, IPs: []string{"10.0.0.2"}, Labels: map[string]string{"app": "web"},
			Ports: []ContainerPort{{Name: "http", Port: 8080}, {Name: "dns", Port: 53, Protocol: "UDP"}}},
		{Name: "client", ID: 2, IPs: []string{"10.0.0.3"}, Labels: map[string]string{"app": "client"}},
	}}
	e, err := newEngine(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := policy.Parse("web.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: http}, {port: dns}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		e.repo.Upsert(p)
	}
	snap := e.repo.Snapshot()
	web, _ := snap.Endpoint(1)
	client, _ := snap.Endpoint(2)
	for _, tc := range []struct {
		name  string
		proto policy.Protocol
		port  uint16
		want  policy.Verdict
	}{
		{name: "http is 8080/TCP", proto: policy.ProtocolTCP, port: 8080, want: policy.VerdictAllowed},
		{name: "dns is 53/UDP", proto: policy.ProtocolUDP, port: 53, want: policy.VerdictAllowed},
		{name: "not 53/TCP", proto: policy.ProtocolTCP, port: 53, want: policy.VerdictDenied},
		{name: "not 80", proto: policy.ProtocolTCP, port: 80, want: policy.VerdictDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := web.Ingress.Lookup(client.Identity, tc.proto, tc.port, false).Verdict; got != tc.want {
				t.Errorf("Lookup(client, %v, %d) = %v; want %v", tc.proto, tc.port, got, tc.want)
			}
		})
	}
}
