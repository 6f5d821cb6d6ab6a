package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

const tiefighterEgress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tiefighter-egress
spec:
  endpointSelector:
    matchLabels: {class: tiefighter}
  egress:
  - toEndpoints:
    - matchLabels: {class: deathstar}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
`

// TestWarddEgressHTTP: an egress HTTP policy of the tiefighter, enforced by
// Envoy on the tiefighter's own egress listener: BPF redirects its port-80
// traffic there, ward.http applies the rules, and the upstream connection
// (marked with the tiefighter's identity) reaches the Death Star; other
// ports are dropped by the egress default deny.
func TestWarddEgressHTTP(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	f, _ := setup(t, "ward.test.inspect")
	topo := netns.New(t)
	labels := map[string]map[string]string{
		"deathstar":  {"org": "empire", "class": "deathstar"},
		"tiefighter": {"org": "empire", "class": "tiefighter"},
	}
	pods := map[string]*netns.Pod{}
	var eps []map[string]any
	for i, name := range []string{"deathstar", "tiefighter"} {
		pods[name] = topo.AddPod(t, netns.PodConfig{Name: name, Labels: labels[name]})
		eps = append(eps, map[string]any{"name": name, "id": i + 1, "ips": []string{pods[name].IP.String()}, "labels": labels[name], "interface": pods[name].HostIf})
	}
	for _, port := range []string{":80", ":8080"} {
		ln, err := pods["deathstar"].Listen("tcp4", port)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: deathstar.New()}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) })
	polDir := filepath.Join(f.stateDir, "policies")
	os.MkdirAll(polDir, 0o755)
	os.WriteFile(filepath.Join(polDir, "egress.yaml"), []byte(tiefighterEgress), 0o644)
	base := freePort(t)
	cfg := map[string]any{
		"node": "wardd-egress", "policyDir": polDir, "endpoints": eps,
		"datapath": map[string]any{"enabled": true, "pinDir": pin, "routingTable": 24000 + int(topo.Subnet.Addr().As4()[2]), "routingPriority": 9004,
			"httpIngressPort": freePort(t), "kafkaIngressPort": freePort(t), "dnsPort": freePort(t), "egressHTTPBasePort": base},
	}
	cb, _ := json.Marshal(cfg)
	os.WriteFile(f.config, cb, 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, f, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}()
	t.Cleanup(func() { cancel(); <-done })

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(method, port, path string) string {
		out, err := pods["tiefighter"].Run(c, "curl", "-s", "--connect-timeout", "2", "--max-time", "5", "-X", method, "-w", " %{http_code}",
			"http://"+pods["deathstar"].IP.String()+port+path)
		if err != nil {
			return "error"
		}
		return strings.Join(strings.Fields(out), " ")
	}
	eventually(t, "Envoy to deny the tiefighter's PUT on its egress listener", func() bool {
		return curl("PUT", "", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("POST", "", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("POST /v1/request-landing = %q; want Ship landed 200 through the egress proxy", got)
	}
	if got := curl("GET", ":8080", "/"); got != "error" {
		t.Errorf("GET :8080 = %q; want dropped by the egress default deny", got)
	}
}
