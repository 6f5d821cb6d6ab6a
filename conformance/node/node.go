// Package node builds a ward node for end-to-end tests the way a user runs
// one: pods are network namespaces with veth pairs (conformance/netns), and
// the node's agent is package agent — the same code wardd runs — configured
// as docs/node-config.md says, with the eBPF datapath, the real Envoy and
// libward.so, and a watched policy directory. Nothing is wired by hand.
//
// Every node gets a private bpffs, its own proxy routing table and
// priority, free proxy ports and its own Envoy base id, so several nodes
// (and several tests) run side by side. It needs root, the pinned Envoy and
// build/libward.so; without them a test skips, except under CI where it
// fails.
//
// NewWith(t, Options{Namespace: true}, ...) makes a node of a multi-node
// cluster: its host side is a network namespace of its own
// (netns.NewNode) and Start runs its agent, Envoy included, inside it as a
// child process of the test binary, whose TestMain calls AgentMain first
// (conformance/multinode wires such nodes into a cluster).
package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

// PodSpec is a pod of a test node. Unmanaged pods (outside the cluster:
// another node's workload, the world) are not endpoints of the agent.
type PodSpec struct {
	Name      string
	Labels    map[string]string
	Namespace string
	Unmanaged bool
	// Ports are the pod's named container ports (the endpoint's ports).
	Ports []agent.ContainerPort
}

// Node is a test node: its pods and, once started, its agent.
type Node struct {
	Topo      *netns.Topology
	Pods      map[string]*netns.Pod
	Specs     []PodSpec
	PolicyDir string
	StateDir  string
	// Config is the agent's configuration; Start fills the endpoints and
	// the datapath, tests may adjust it before Start.
	Config agent.Config
	// Agent is the running agent; nil on a NewWith Namespace node, whose
	// agent is a child process in the node's namespace.
	Agent *agent.Agent

	pin  string
	stop func() error
}

// New builds the node's pods (root; needs curl).
func New(t *testing.T, specs ...PodSpec) *Node {
	t.Helper()
	return NewWith(t, Options{}, specs...)
}

// newNode is a node over topo, without pods.
func newNode(t *testing.T, topo *netns.Topology) *Node {
	t.Helper()
	bin := testenv.EnvoyPath(t)
	lib := Module(t)
	dir, err := os.MkdirTemp("", "ward-node-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &Node{Topo: topo, Pods: map[string]*netns.Pod{}, PolicyDir: filepath.Join(dir, "policies"), StateDir: dir}
	n.Config = agent.Config{
		Node:     "node-" + t.Name(),
		StateDir: dir,
		Envoy: agent.EnvoyConfig{Binary: bin, ModuleDir: filepath.Dir(lib), Admin: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), Concurrency: 1,
			BaseID: int(baseID.Add(1)) + os.Getpid()%1000*100, ExtraArgs: []string{"--drain-time-s", "1"}, DieWithAgent: true},
	}
	return n
}

var baseID atomic.Int32

// Module is the libward.so the node's Envoy loads: build/libward.so, or
// the one in $WARD_MODULE_DIR (e.g. build/cgocheck2).
func Module(t testing.TB) string {
	t.Helper()
	rel := "build/libward.so"
	if d := os.Getenv("WARD_MODULE_DIR"); d != "" {
		rel = filepath.Join(d, "libward.so")
		if filepath.IsAbs(d) {
			if r, err := filepath.Rel(testenv.Root(t), rel); err == nil {
				rel = r
			}
		}
	}
	return testenv.File(t, rel, "run `make build`")
}

// Serve runs h on the given ports inside a pod.
func (n *Node) Serve(t *testing.T, pod string, h http.Handler, ports ...string) {
	t.Helper()
	for _, port := range ports {
		ln, err := n.Pods[pod].Listen("tcp", port)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
}

// WritePolicy writes (or edits) one file of the watched policy directory.
func (n *Node) WritePolicy(t *testing.T, file, body string) {
	t.Helper()
	if err := os.MkdirAll(n.PolicyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.PolicyDir, file), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// RemovePolicy deletes one file of the watched policy directory.
func (n *Node) RemovePolicy(t *testing.T, file string) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.PolicyDir, file)); err != nil {
		t.Fatal(err)
	}
}

// Start runs the agent over the node: a private bpffs, proxy routing in a
// table of the test's own (table and priority distinct per test), free
// proxy ports, the policy directory, every managed pod an endpoint. It
// returns once the agent published its first policy and Envoy is ready.
func (n *Node) Start(t *testing.T, table, priority int) {
	t.Helper()
	n.Configure(t, table, priority)
	if n.Topo.Host() != nil {
		n.startChild(t)
		return
	}
	a, err := agent.New(n.Config, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	n.Agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	n.stop = func() error { once.Do(func() { cancel(); runErr = <-done }); return runErr }
	t.Cleanup(func() {
		if err := n.stop(); err != nil {
			t.Errorf("agent: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(n.StateDir, "envoy.log"))
			t.Logf("envoy log (tail):\n%s", tail(string(b), 40))
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("agent stopped before ready: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("agent not ready after 90s")
	}
}

// Configure completes the node's Config as a user's node config file would
// hold it (once; later calls keep it): every managed pod an endpoint, the
// policy directory, the datapath on a private bpffs, proxy routing in a
// table and priority of the test's own, and every proxy port from one
// block of free ports. The pins and the routing rule are removed when the
// test ends. Start calls it; tests that run the wardd binary write
// n.Config to its config file.
func (n *Node) Configure(t *testing.T, table, priority int) {
	t.Helper()
	if n.pin != "" {
		return
	}
	n.pin = t.TempDir()
	if err := unix.Mount("bpf", n.pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	pin := n.pin
	t.Cleanup(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) })
	cfg := n.Config
	for i, s := range n.Specs {
		if s.Unmanaged {
			continue
		}
		p := n.Pods[s.Name]
		ips := []string{p.IP.String()}
		if p.IPv6.IsValid() {
			ips = append(ips, p.IPv6.String())
		}
		ep := agent.Endpoint{Name: s.Name, ID: uint64(i + 1), IPs: ips, Labels: s.Labels, Namespace: s.Namespace, Interface: p.HostIf, Ports: s.Ports}
		if cfg.Datapath.Mode == agent.ModeSocket && p.Cgroup != nil {
			// Pod.Command runs the pod's processes in it.
			ep.Cgroup = p.Cgroup.Path
		}
		cfg.Endpoints = append(cfg.Endpoints, ep)
	}
	cfg.PolicyDir = n.PolicyDir
	if err := os.MkdirAll(n.PolicyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dc := cfg.Datapath
	dc.Enabled, dc.PinDir = true, n.pin
	dc.RoutingTable, dc.RoutingPriority = table+int(n.Topo.Subnet.Addr().As4()[2]), priority
	// One block of free ports: the per-endpoint egress listeners take
	// consecutive ports from their bases.
	b := FreeBlock(t, 64)
	dc.HTTPIngressPort, dc.KafkaIngressPort, dc.DNSPort = b, b+1, b+2
	dc.EgressHTTPBasePort, dc.EgressKafkaBasePort = b+16, b+32
	dc.TLSIngressPort, dc.EgressTLSBasePort = b+3, b+48
	// The agent leaves its proxy routing rule in place when it stops (an
	// Envoy that outlives it keeps receiving); the node removes it.
	routing := redirect.Routing{Table: dc.RoutingTable, Priority: dc.RoutingPriority}
	t.Cleanup(func() { redirect.RemoveProxyRouting(routing) })
	cfg.Datapath = dc
	n.Config = cfg
}

// Stop stops the node's agent (a graceful wardd stop: Envoy stops, the
// pinned BPF programs and maps keep enforcing); Start runs it again over
// the same pins and state directory.
func (n *Node) Stop(t *testing.T) {
	t.Helper()
	if err := n.stop(); err != nil {
		t.Fatalf("agent: %v", err)
	}
}

// Curl runs curl in a pod; "error" when it fails (dropped, refused).
func (n *Node) Curl(ctx context.Context, from string, args ...string) string {
	out, err := n.Pods[from].Run(ctx, "curl", append([]string{"-s", "--connect-timeout", "2", "--max-time", "5"}, args...)...)
	if err != nil {
		return "error"
	}
	return strings.Join(strings.Fields(out), " ")
}

// Eventually waits up to a minute for cond.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FreeBlock returns the first of n consecutive ports free (TCP and UDP on
// every address) right now, away from the ephemeral range.
func FreeBlock(t testing.TB, n int) uint16 {
	t.Helper()
	for try := 0; try < 200; try++ {
		// Below the kernel's ephemeral range (net.ipv4.ip_local_port_range
		// starts at 32768), so no client socket takes a port of the block
		// after it was checked.
		base := 12000 + (os.Getpid()*7919+int(blockSeq.Add(1))*64+try*997)%20000/64*64
		ok := true
		for p := base; p < base+n && ok; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
			u, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
			if err != nil {
				ok = false
				break
			}
			u.Close()
		}
		if ok {
			return uint16(base)
		}
	}
	t.Fatalf("no block of %d free ports", n)
	return 0
}

var blockSeq atomic.Int32

// FreePort returns a TCP port free on 127.0.0.1 right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
