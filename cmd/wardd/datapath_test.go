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

// TestWarddDatapath runs the agent whole on a node of pods: wardd resolves
// the policy directory, loads the BPF datapath, attaches it to the pods'
// veths, writes the maps, and gives Envoy its transparent listener; curl in
// the tiefighter pod reaches the Death Star through bpf_sk_assign and
// Envoy's HTTP rules, xwing is dropped in BPF; editing the policy file
// changes both.
func TestWarddDatapath(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	f, _ := setup(t, "ward.test.inspect")
	topo := netns.New(t)
	pods := map[string]*netns.Pod{}
	labels := map[string]map[string]string{
		"deathstar":  {"org": "empire", "class": "deathstar"},
		"tiefighter": {"org": "empire", "class": "tiefighter"},
		"xwing":      {"org": "alliance", "class": "xwing"},
	}
	var eps []map[string]any
	for i, name := range []string{"deathstar", "tiefighter", "xwing"} {
		pods[name] = topo.AddPod(t, netns.PodConfig{Name: name, Labels: labels[name]})
		eps = append(eps, map[string]any{"name": name, "id": i + 1, "ips": []string{pods[name].IP.String()}, "labels": labels[name], "interface": pods[name].HostIf})
	}
	ln, err := pods["deathstar"].Listen("tcp4", ":80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: deathstar.New()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) })
	polDir := filepath.Join(f.stateDir, "policies")
	os.MkdirAll(polDir, 0o755)
	b, _ := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	os.WriteFile(filepath.Join(polDir, "policy.yaml"), b, 0o644)
	cfg := map[string]any{
		"node": "wardd-dp", "policyDir": polDir, "endpoints": eps,
		"datapath": map[string]any{"enabled": true, "pinDir": pin, "routingTable": 22000 + int(topo.Subnet.Addr().As4()[2]), "routingPriority": 9002,
			"httpIngressPort": freePort(t), "kafkaIngressPort": freePort(t)},
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
	curl := func(from, method, path string) string {
		out, err := pods[from].Run(c, "curl", "-s", "--connect-timeout", "2", "--max-time", "5", "-X", method, "-w", " %{http_code}", "http://"+pods["deathstar"].IP.String()+path)
		if err != nil {
			return "error"
		}
		return strings.Join(strings.Fields(out), " ")
	}
	// Until wardd has written the maps nothing is enforced; wait for the
	// proxy's answer.
	eventually(t, "Envoy to deny tiefighter's PUT through wardd's datapath", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("tiefighter POST = %q; want Ship landed 200", got)
	}
	if got := curl("xwing", "POST", "/v1/request-landing"); got != "error" {
		t.Errorf("xwing POST = %q; want dropped", got)
	}
	// Edit the policy: the alliance may land too (L3/L4 in BPF and L7 in
	// Envoy both change).
	i := strings.LastIndex(string(b), "org: empire")
	edited := string(b[:i]) + "org: alliance" + string(b[i+len("org: empire"):])
	os.WriteFile(filepath.Join(polDir, "policy.yaml"), []byte(edited), 0o644)
	eventually(t, "xwing to land after the policy edit", func() bool {
		return curl("xwing", "POST", "/v1/request-landing") == "Ship landed 200"
	})
}
