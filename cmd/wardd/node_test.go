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

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

// podSpec is a pod of a test node; unmanaged pods (outside the cluster)
// are not wardd endpoints.
type podSpec struct {
	name      string
	labels    map[string]string
	unmanaged bool
}

// node is a test node of pods run by wardd in datapath mode.
type node struct {
	f      flags
	topo   *netns.Topology
	pods   map[string]*netns.Pod
	specs  []podSpec
	polDir string
}

// newNode builds the pods (root; needs curl).
func newNode(t *testing.T, specs ...podSpec) *node {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	f, _ := setup(t, "ward.test.inspect")
	n := &node{f: f, topo: netns.New(t), pods: map[string]*netns.Pod{}, specs: specs, polDir: filepath.Join(f.stateDir, "policies")}
	for _, s := range specs {
		n.pods[s.name] = n.topo.AddPod(t, netns.PodConfig{Name: s.name, Labels: s.labels})
	}
	return n
}

// serve runs h on the given ports inside a pod.
func (n *node) serve(t *testing.T, pod string, h http.Handler, ports ...string) {
	t.Helper()
	for _, port := range ports {
		ln, err := n.pods[pod].Listen("tcp4", port)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
}

// writePolicy writes (or edits) one file of the watched policy directory.
func (n *node) writePolicy(t *testing.T, file, body string) {
	t.Helper()
	if err := os.MkdirAll(n.polDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.polDir, file), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start runs wardd over the node: a private bpffs, proxy routing in a
// table of the test's own (table and priority distinct per test), free
// proxy ports, the policy directory, every managed pod an endpoint.
func (n *node) start(t *testing.T, table, priority int) {
	t.Helper()
	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) })
	var eps []map[string]any
	for i, s := range n.specs {
		if s.unmanaged {
			continue
		}
		p := n.pods[s.name]
		eps = append(eps, map[string]any{"name": s.name, "id": i + 1, "ips": []string{p.IP.String()}, "labels": s.labels, "interface": p.HostIf})
	}
	cfg := map[string]any{
		"node": "wardd-" + t.Name(), "policyDir": n.polDir, "endpoints": eps,
		"datapath": map[string]any{"enabled": true, "pinDir": pin, "routingTable": table + int(n.topo.Subnet.Addr().As4()[2]), "routingPriority": priority,
			"httpIngressPort": freePort(t), "kafkaIngressPort": freePort(t), "dnsPort": freePort(t), "egressHTTPBasePort": freePort(t)},
	}
	cb, _ := json.Marshal(cfg)
	if err := os.WriteFile(n.f.config, cb, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, n.f, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// curl runs curl in a pod; "error" when it fails (dropped, refused).
func (n *node) curl(ctx context.Context, from string, args ...string) string {
	out, err := n.pods[from].Run(ctx, "curl", append([]string{"-s", "--connect-timeout", "2", "--max-time", "5"}, args...)...)
	if err != nil {
		return "error"
	}
	return strings.Join(strings.Fields(out), " ")
}
