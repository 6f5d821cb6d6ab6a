package attack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// wardd runs the real wardd binary (build/bin/wardd) over a node's pods,
// configured as node.Start configures the in-process agent (the node
// config file of docs/node-config.md), so a test can kill -9 it.
type wardd struct {
	bin, cfgPath string
	n            *node.Node
	cmd          *exec.Cmd
	done         chan struct{}
}

// startWardd writes the node's config file (private bpffs, proxy routing
// in the test's table and priority, free proxy ports, every managed pod an
// endpoint) and starts wardd on it. Envoy's admin is wardd's default (a
// unix socket in the state directory).
func startWardd(t *testing.T, n *node.Node, table, priority int) *wardd {
	t.Helper()
	w := &wardd{bin: testenv.File(t, "build/bin/wardd", "run `make build`"), n: n}
	n.Config.Datapath.AccessLog = filepath.Join(n.StateDir, "flows.jsonl")
	n.Configure(t, table, priority)
	cfg := n.Config
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.cfgPath = filepath.Join(n.StateDir, "node.json")
	if err := os.WriteFile(w.cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.stop(t)
		// An Envoy left behind by a killed wardd (the graceful stop above
		// stops the one wardd supervises).
		if b, err := os.ReadFile(filepath.Join(n.StateDir, "envoy.pid")); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 {
				if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "envoy" {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if t.Failed() {
			for _, f := range []string{"envoy.log", "flows.jsonl"} {
				b, _ := os.ReadFile(filepath.Join(n.StateDir, f))
				lines := strings.Split(string(b), "\n")
				t.Logf("%s (tail):\n%s", f, strings.Join(lines[max(0, len(lines)-30):], "\n"))
			}
		}
	})
	w.start(t)
	return w
}

// start runs wardd (again) over the same config, state and pins.
func (w *wardd) start(t *testing.T) {
	t.Helper()
	ec := w.n.Config.Envoy
	w.cmd = exec.Command(w.bin, "--state-dir", w.n.StateDir, "--config", w.cfgPath, "--envoy", ec.Binary, "--module-dir", ec.ModuleDir,
		"--concurrency", "1", "--log-level", "warn")
	w.cmd.Stderr = os.Stderr
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(w.cmd, w.done)
}

// kill9 kills wardd with SIGKILL and waits for it to be gone.
func (w *wardd) kill9(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w.done
}

// stop stops a running wardd gracefully (SIGTERM).
func (w *wardd) stop(t *testing.T) {
	select {
	case <-w.done:
		return
	default:
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second): // bounds a stuck stop, not a timing assertion
		t.Errorf("wardd did not stop on SIGTERM")
		w.cmd.Process.Kill()
		<-w.done
	}
}

// status reads wardd's status document from its status socket; the zero
// Status while wardd is not serving.
func (w *wardd) status() api.Status {
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(w.n.StateDir, api.Socket))
	}}}
	resp, err := cl.Get("http://wardd" + api.StatusPath)
	if err != nil {
		return api.Status{}
	}
	defer resp.Body.Close()
	var st api.Status
	json.NewDecoder(resp.Body).Decode(&st)
	return st
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// echoPath answers with the request's path, so a reply tells which request
// reached the pod.
func echoPath(t *testing.T, n *node.Node, pod string, ports ...string) {
	n.Serve(t, pod, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }), ports...)
}

// traffic is a loop of requests from a pod through Envoy's L7 listener:
// GET /public (allowed) then GET /secret (denied), each a new curl, the
// answer recorded with the phase it was sent in.
type traffic struct {
	phase  atomic.Value // string
	rounds atomic.Int64
	mu     sync.Mutex
	got    []answer
	stop   context.CancelFunc
	done   chan struct{}
}

// answer is one request's: the phases it started and ended in, the path,
// what it got ("error" when curl failed, with the detail).
type answer struct{ phase, end, path, got, detail string }

const (
	allowedAnswer = "/public 200"
	deniedAnswer  = "Access denied 403"
	bypassAnswer  = "/secret 200" // the denied request reached the pod
)

func startTraffic(t *testing.T, n *node.Node, from, url string) *traffic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{stop: cancel, done: make(chan struct{})}
	tr.phase.Store("start")
	go func() {
		defer close(tr.done)
		for ctx.Err() == nil {
			for _, path := range []string{"/public", "/secret"} {
				ph := tr.phase.Load().(string)
				out, err := n.Pods[from].Run(ctx, "curl", "-sS", "--connect-timeout", "2", "--max-time", "5", "-w", " %{http_code}", url+path)
				if ctx.Err() != nil {
					return
				}
				a := answer{phase: ph, end: tr.phase.Load().(string), path: path, got: strings.Join(strings.Fields(out), " ")}
				if err != nil {
					a.got, a.detail = "error", err.Error()
				}
				tr.mu.Lock()
				tr.got = append(tr.got, a)
				tr.mu.Unlock()
			}
			tr.rounds.Add(1)
		}
	}()
	t.Cleanup(func() { cancel(); <-tr.done })
	return tr
}

// enter starts a phase and waits for k full rounds sent in it.
func (tr *traffic) enter(t *testing.T, phase string, k int64) {
	t.Helper()
	tr.phase.Store(phase)
	r := tr.rounds.Load() + 1 // the round in flight may have started earlier
	node.Eventually(t, fmt.Sprintf("%d rounds of traffic in phase %s", k, phase), func() bool { return tr.rounds.Load() >= r+k })
}

// end stops the loop and returns what it got.
func (tr *traffic) end() []answer {
	tr.stop()
	<-tr.done
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.got
}

// TestAttackKillWarddUnderTraffic: kill -9 of wardd while a pod sends
// allowed and denied requests through Envoy's L7 listener. Envoy keeps
// enforcing the last policy it had — every allowed request answered by
// the pod, every denied one by Envoy's 403, none failing — and a new
// wardd adopts the running Envoy (same pid, none started). Then kill -9 of
// the adopted Envoy: the new wardd restarts it (it supervises the adopted
// one through a pidfd); meanwhile requests fail, a denied one never
// reaches the pod, and afterwards both work again. Fails against 0c4dab0^
// (Envoy got SIGKILL with wardd through Pdeathsig: every request failed
// while wardd was gone).
func TestAttackKillWarddUnderTraffic(t *testing.T) {
	n := node.New(t, pods...)
	echoPath(t, n, "victim", ":80")
	n.WritePolicy(t, "attacker.yaml", attackerL7)
	w := startWardd(t, n, 27400, 9111)
	url := "http://" + n.Pods["victim"].IP.String()
	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	node.Eventually(t, "wardd's Envoy to enforce the L7 rule", func() bool {
		return n.Curl(c, "attacker", "-w", " %{http_code}", url+"/public") == allowedAnswer &&
			n.Curl(c, "attacker", "-w", " %{http_code}", url+"/secret") == deniedAnswer
	})
	pid := w.status().Envoy.PID
	if !alive(pid) {
		t.Fatalf("status envoy pid = %d; want a running Envoy", pid)
	}
	tr := startTraffic(t, n, "attacker", url)
	tr.enter(t, "wardd running", 2)

	w.kill9(t)
	tr.enter(t, "wardd killed", 3)
	if !alive(pid) {
		t.Errorf("envoy %d died with wardd", pid)
	}

	// From the new wardd's start until Envoy applied its first policy
	// publish, an allowed request may be denied: the in-Envoy policy
	// client reconnects to the new wardd's xDS server, which serves before
	// its first publish, and the client then holds no policy for a moment
	// ("no policy for the endpoint", peer identity world). Fail closed,
	// but not "allowed stays allowed": a known bug, counted and logged
	// here (never a bypass).
	tr.phase.Store("wardd restarting")
	w.start(t)
	node.Eventually(t, "the new wardd to adopt Envoy and Envoy to apply its policy", func() bool {
		st := w.status()
		if st.Envoy == nil || st.Envoy.Adopted != 1 || len(st.Delivery) == 0 {
			return false
		}
		for _, d := range st.Delivery {
			if d.Total == 0 || d.Acked != d.Total {
				return false
			}
		}
		return true
	})
	if e := w.status().Envoy; e.PID != pid || e.Starts != 0 {
		t.Errorf("after the restart: envoy %+v; want pid %d adopted, none started", e, pid)
	}
	tr.enter(t, "adopted", 2)

	tr.phase.Store("envoy killed")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the new wardd to restart the adopted Envoy", func() bool {
		e := w.status().Envoy
		return e != nil && e.PID != pid && alive(e.PID)
	})
	tr.phase.Store("envoy started")
	node.Eventually(t, "allowed requests to work again", func() bool {
		return n.Curl(c, "attacker", "-w", " %{http_code}", url+"/public") == allowedAnswer
	})
	tr.enter(t, "envoy restarted", 2)
	got := tr.end()
	checkAnswers(t, got, map[string][]string{
		"wardd restarting": {deniedAnswer},
		"envoy killed":     {"error", deniedAnswer},
		"envoy started":    {"error", deniedAnswer},
	})
	for _, a := range got {
		if a.path == "/public" && a.got == deniedAnswer && (a.phase == "wardd restarting" || a.end == "wardd restarting") {
			t.Logf("known bug: an allowed request was denied while the new wardd started (its xDS server serves before the first publish)")
			break
		}
	}
}

// checkAnswers: no denied request ever reached the pod; a request sent or
// answered in a phase of tolerate may also get one of that phase's
// answers; every other one gets the right answer.
func checkAnswers(t *testing.T, got []answer, tolerate map[string][]string) {
	t.Helper()
	counts := map[string]int{}
	for _, a := range got {
		counts[a.phase+" "+a.path+" -> "+a.got]++
		want := allowedAnswer
		if a.path == "/secret" {
			want = deniedAnswer
		}
		switch {
		case a.got == bypassAnswer:
			t.Errorf("%s: GET %s reached the pod (%q): Envoy bypassed", a.phase, a.path, a.got)
		case a.got == want:
		case slices.Contains(tolerate[a.phase], a.got) || slices.Contains(tolerate[a.end], a.got):
		default:
			t.Errorf("%s: GET %s = %q; want %q %s", a.phase, a.path, a.got, want, a.detail)
		}
	}
	t.Logf("answers: %v", counts)
}

// TestAttackKillEnvoyUnderTraffic: kill -9 of Envoy under the node agent
// while a pod sends allowed and denied requests through its L7 listener:
// while Envoy restarts requests fail (the datapath drops what it cannot
// hand to the proxy; a denied request never reaches the pod), then both
// work again with the agent's policy.
func TestAttackKillEnvoyUnderTraffic(t *testing.T) {
	n := node.New(t, pods...)
	echoPath(t, n, "victim", ":80")
	n.WritePolicy(t, "attacker.yaml", attackerL7)
	n.Start(t, 27500, 9112)
	url := "http://" + n.Pods["victim"].IP.String()
	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	node.Eventually(t, "Envoy to enforce the L7 rule", func() bool {
		return n.Curl(c, "attacker", "-w", " %{http_code}", url+"/public") == allowedAnswer
	})
	e := n.Agent.Status().Envoy
	if e == nil || !alive(e.PID) {
		t.Fatalf("status envoy = %+v; want a running Envoy", e)
	}
	pid := e.PID
	tr := startTraffic(t, n, "attacker", url)
	tr.enter(t, "envoy running", 2)

	tr.phase.Store("envoy killed")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the agent to restart Envoy", func() bool {
		e := n.Agent.Status().Envoy
		return e != nil && e.PID != pid && alive(e.PID)
	})
	tr.phase.Store("envoy started")
	node.Eventually(t, "allowed requests to work again", func() bool {
		return n.Curl(c, "attacker", "-w", " %{http_code}", url+"/public") == allowedAnswer
	})
	tr.enter(t, "envoy restarted", 3)
	checkAnswers(t, tr.end(), map[string][]string{
		"envoy killed":  {"error", deniedAnswer},
		"envoy started": {"error", deniedAnswer},
	})
}
