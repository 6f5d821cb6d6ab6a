// Package stack starts ward's proxy stack for end-to-end tests of the
// Envoy builders and filters: a node agent (package agent — the code
// wardd runs) with no policy source of its own, serving xDS on a unix
// socket in a temporary directory and supervising the official Envoy with
// libward.so. Tests push Envoy resources and policy resources through the
// agent's xDS server and wait until Envoy and the Go filters inside it
// have applied them, then drive real clients. Whole-node tests use
// conformance/node instead.
//
// It needs the pinned Envoy (.venv, `make setup`) and the test module
// build/test/libward.so (`make build`; the suites use the ward.test.*
// filters, which the production module does not have); without them a test
// skips, except under CI where it fails.
package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/internal/envoyproc"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// Options tune the stack.
type Options struct {
	Concurrency int    // Envoy workers; default 1
	LogLevel    string // default "info"
}

// Stack is a running node agent (package agent, with no policy source of
// its own) and its Envoy; tests publish through XDS.
type Stack struct {
	Agent   *agent.Agent
	XDS     *xds.Server
	Node    string
	Socket  string
	Dir     string
	Admin   string // "127.0.0.1:PORT"
	Proc    *envoyproc.Proc
	LogPath string

	stopXDS   func()
	lastHosts []*npds.NetworkPolicyHosts
}

// Start starts the stack; t.Cleanup stops it.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	bin := testenv.EnvoyPath(t)
	lib := testenv.Module(t)
	if o.Concurrency == 0 {
		o.Concurrency = 1
	}
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ward-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Stack{Node: "ward-test", Dir: dir, LogPath: filepath.Join(dir, "envoy.log")}
	s.Admin = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	// KeepRunning: StopXDS stops the agent and leaves Envoy enforcing
	// what it has, as when wardd goes away.
	a, err := agent.New(agent.Config{Node: s.Node, StateDir: dir, Envoy: agent.EnvoyConfig{
		Binary: bin, ModuleDir: filepath.Dir(lib), Admin: s.Admin, Concurrency: o.Concurrency, LogLevel: o.LogLevel,
		BaseID: int(time.Now().UnixNano() % 100000), KeepRunning: true, DieWithAgent: true,
		// Listener updates drain the old listener for drain-time-s; tests
		// need the new one at once.
		ExtraArgs: []string{"--drain-time-s", "1"},
	}}, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	s.Agent, s.XDS, s.Socket = a, a.XDS(), a.XDSSocket()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	s.stopXDS = func() { once.Do(func() { cancel(); runErr = <-done }) }
	t.Cleanup(func() {
		pid := 0
		if s.Proc != nil {
			pid = s.Proc.PID()
		}
		s.stopXDS()
		if runErr != nil {
			t.Errorf("agent: %v", runErr)
		}
		stopEnvoy(pid, filepath.Join(dir, "envoy.pid"))
		if t.Failed() {
			if b, err := os.ReadFile(s.LogPath); err == nil {
				t.Logf("envoy log (tail):\n%s", tail(string(b), 60))
			}
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("agent stopped before ready: %v; envoy log:\n%s", err, s.LogTail())
	case <-time.After(60 * time.Second):
		t.Fatalf("envoy not ready after 60s; log:\n%s", s.LogTail())
	}
	s.Proc = a.Envoy()
	return s
}

// stopEnvoy stops the Envoy the agent left running (KeepRunning).
func stopEnvoy(pid int, pidFile string) {
	if pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil {
			fmt.Sscanf(string(b), "%d", &pid)
		}
	}
	if pid <= 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// LogTail returns the end of Envoy's log.
func (s *Stack) LogTail() string {
	b, _ := os.ReadFile(s.LogPath)
	return tail(string(b), 40)
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PushEnvoy publishes listeners and clusters and waits until Envoy acked
// that version and its listeners are active.
func (s *Stack) PushEnvoy(t testing.TB, r xds.EnvoyResources) {
	t.Helper()
	v, err := s.XDS.SetEnvoyResources(context.Background(), s.Node, r)
	if err != nil {
		t.Fatal(err)
	}
	s.waitFor(t, "Envoy to ack listeners "+v, func() bool { return s.XDS.Acked(resource.ListenerType) == v })
	s.waitFor(t, "listeners to be active", func() bool {
		warming := s.Stat(t, "listener_manager.total_listeners_warming")
		active := s.Stat(t, "listener_manager.total_listeners_active")
		return warming == 0 && active == uint64(len(r.Listeners))
	})
}

// PushPolicy publishes endpoint policies and the identity table, and waits
// until the Go filters inside Envoy acked both.
func (s *Stack) PushPolicy(t testing.TB, ps []*npds.NetworkPolicy, hosts []*npds.NetworkPolicyHosts) {
	t.Helper()
	// The caches send nothing for an unchanged set: wait only for what
	// changed.
	same := len(hosts) == len(s.lastHosts)
	for i := 0; same && i < len(hosts); i++ {
		same = proto.Equal(hosts[i], s.lastHosts[i])
	}
	s.lastHosts = hosts
	if !same {
		hv := s.XDS.SetHosts(hosts)
		s.waitFor(t, "proxy to ack hosts "+hv, func() bool { return s.XDS.Acked(npds.NetworkPolicyHostsType) == hv })
	}
	pv := s.XDS.SetPolicies(ps)
	s.waitFor(t, "proxy to ack policy "+pv, func() bool { return s.XDS.Acked(npds.NetworkPolicyType) == pv })
}

// PushPolicyOnly publishes endpoint policies and returns their version
// without waiting.
func (s *Stack) PushPolicyOnly(ps []*npds.NetworkPolicy) string { return s.XDS.SetPolicies(ps) }

func (s *Stack) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; envoy log:\n%s", what, s.LogTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stat returns one counter or gauge from Envoy's admin /stats (0 if absent).
func (s *Stack) Stat(t testing.TB, name string) uint64 {
	t.Helper()
	resp, err := http.Get("http://" + s.Admin + "/stats?filter=^" + strings.ReplaceAll(name, ".", "\\.") + "$")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if ok && k == name {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// HTTPFilterConfig is the JSON configuration of the ward.http filter for
// this stack: it subscribes to this stack's policy.
func (s *Stack) HTTPFilterConfig(extra map[string]any) []byte {
	m := map[string]any{"xds_socket": s.Socket, "node": s.Node}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return b
}

// FreePort returns a TCP port free on 127.0.0.1 right now.
func FreePort(t testing.TB) uint32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint32(l.Addr().(*net.TCPAddr).Port)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
