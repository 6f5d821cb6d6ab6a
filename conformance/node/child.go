package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

// Options configures NewWith.
type Options struct {
	// Namespace makes the node's host side a network namespace of its own
	// (netns.NewNode) instead of the test's: a node of a multi-node
	// cluster. Start then runs the agent (and so Envoy) inside it, as a
	// child process of the test binary: the test's TestMain must call
	// AgentMain first.
	Namespace bool
	// Routes are extra prefixes every pod routes to the node (an underlay,
	// the world).
	Routes []netip.Prefix
	// IPv6 makes every pod dual-stack (netns.PodConfig.IPv6): its endpoint
	// gets both addresses (ips: [v4, v6]), as docs/node-config.md shows.
	IPv6 bool
}

// NewWith is New with options.
func NewWith(t *testing.T, opts Options, specs ...PodSpec) *Node {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	var topo *netns.Topology
	if opts.Namespace {
		topo = netns.NewNode(t)
	} else {
		topo = netns.New(t)
	}
	n := newNode(t, topo)
	for _, s := range specs {
		n.Pods[s.Name] = n.Topo.AddPod(t, netns.PodConfig{Name: s.Name, Labels: s.Labels, Routes: opts.Routes, IPv6: opts.IPv6})
	}
	n.Specs = specs
	return n
}

// HostCurl runs curl in the node's host namespace (a NewWith Namespace
// node); "error" when it fails.
func (n *Node) HostCurl(ctx context.Context, args ...string) string {
	out, err := n.Topo.Host().Run(ctx, "curl", append([]string{"-s", "--connect-timeout", "2", "--max-time", "5"}, args...)...)
	if err != nil {
		return "error"
	}
	return strings.Join(strings.Fields(out), " ")
}

const agentEnv = "WARD_NODE_AGENT_CONFIG"

// childConfig is the agent configuration handed to the child process,
// the flag-only fields included.
type childConfig struct {
	Config   agent.Config
	StateDir string
	Envoy    agent.EnvoyConfig
}

// AgentMain runs a namespaced node's agent when the test binary was
// started as one by Start, and exits; otherwise it returns at once. Call
// it first in TestMain. The agent is package agent, as wardd runs it:
// agent.New, Run until SIGTERM.
func AgentMain() {
	path := os.Getenv(agentEnv)
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "node agent: %v\n", err)
		os.Exit(1)
	}
	var cc childConfig
	if err := json.Unmarshal(b, &cc); err != nil {
		fmt.Fprintf(os.Stderr, "node agent: %v\n", err)
		os.Exit(1)
	}
	cfg := cc.Config
	cfg.StateDir, cfg.Envoy = cc.StateDir, cc.Envoy
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// A test binary that dies (a timeout, a kill) cannot stop its agents:
	// each stops by itself once its parent is gone.
	ctx, orphaned := context.WithCancel(ctx)
	defer orphaned()
	go func() {
		parent := os.Getppid()
		for ctx.Err() == nil && os.Getppid() == parent {
			time.Sleep(500 * time.Millisecond)
		}
		orphaned()
	}()
	a, err := agent.New(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "node agent: %v\n", err)
		os.Exit(1)
	}
	go func() {
		select {
		case <-a.Ready():
			fmt.Println("ready")
		case <-ctx.Done():
		}
	}()
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "node agent: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// startChild runs the agent in the node's namespace as a child process
// (AgentMain) and waits until it is ready.
func (n *Node) startChild(t *testing.T) {
	t.Helper()
	b, err := json.Marshal(childConfig{Config: n.Config, StateDir: n.Config.StateDir, Envoy: n.Config.Envoy})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(n.StateDir, "node-agent.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(n.StateDir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), agentEnv+"="+path)
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Topo.Host().Start(cmd); err != nil {
		t.Fatalf("start node agent: %v", err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
				break
			}
		}
		for sc.Scan() {
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var once sync.Once
	var runErr error
	n.stop = func() error {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				runErr = fmt.Errorf("agent did not stop within 30s: %w", <-done)
			}
			logf.Close()
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := n.stop(); err != nil {
			t.Errorf("agent: %v", err)
		}
		if t.Failed() {
			for _, f := range []string{"agent.log", "envoy.log"} {
				b, _ := os.ReadFile(filepath.Join(n.StateDir, f))
				t.Logf("%s %s (tail):\n%s", n.Topo.Host().Name, f, tail(string(b), 30))
			}
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- err
		b, _ := os.ReadFile(filepath.Join(n.StateDir, "agent.log"))
		t.Fatalf("agent stopped before ready: %v\n%s", err, tail(string(b), 30))
	case <-time.After(90 * time.Second):
		t.Fatal("agent not ready after 90s")
	}
}
