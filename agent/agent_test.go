package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/internal/envoyproc"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/xds"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// setup returns a node config with one HTTP listener using filter, in
// front of a real upstream, and the listener's URL.
func setup(t *testing.T, filter string) (agent.Config, string) {
	t.Helper()
	bin := testenv.EnvoyPath(t)
	lib := testModule(t)
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream") })}
	ul, _ := net.Listen("tcp", "127.0.0.1:0")
	go up.Serve(ul)
	t.Cleanup(func() { up.Close() })
	dir, _ := os.MkdirTemp("", "wardd-")
	t.Cleanup(func() { os.RemoveAll(dir) })
	port := freePort(t)
	cfg := agent.Config{
		Node: "wardd-test",
		Listeners: []agent.Listener{{Name: "h", Kind: "http", Address: "127.0.0.1", Port: uint32(port),
			Upstream: ul.Addr().String(), Filters: []string{filter}}},
		StateDir: dir,
		Envoy:    agent.EnvoyConfig{Binary: bin, ModuleDir: filepath.Dir(lib), Admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), Concurrency: 1},
	}
	return cfg, fmt.Sprintf("http://127.0.0.1:%d/", port)
}

// testModule is the libward.so with the test filters (ward.test.*).
func testModule(t *testing.T) string {
	t.Helper()
	return testenv.Module(t)
}

// run builds the agent from cfg and runs it until ctx is done.
func run(ctx context.Context, cfg agent.Config, log *slog.Logger) error {
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func start(t *testing.T, cfg agent.Config) (context.CancelFunc, chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("wardd did not stop within 30s")
		}
	})
	return cancel, done
}

func getStatus(t *testing.T, dir string) api.Status {
	t.Helper()
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, api.Socket))
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

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func answers(url string) bool {
	resp, err := (&http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 299 || resp.StatusCode == 200
}

// TestSupervisesEnvoy: wardd starts Envoy from its bootstrap, serves the
// listener, restarts Envoy when it dies, and stops it cleanly.
func TestSupervisesEnvoy(t *testing.T) {
	f, url := setup(t, "ward.test.inspect")
	cancel, done := start(t, f)
	eventually(t, "the listener to answer", func() bool { return answers(url) })
	st := getStatus(t, f.StateDir)
	if st.Envoy == nil || st.Envoy.Starts != 1 || st.Envoy.PID == 0 {
		t.Fatalf("status = %+v; want envoy started once", st)
	}
	pid := st.Envoy.PID
	syscall.Kill(pid, syscall.SIGKILL)
	eventually(t, "envoy to be restarted", func() bool {
		s := getStatus(t, f.StateDir)
		return s.Envoy != nil && s.Envoy.Starts == 2 && s.Envoy.PID != 0 && s.Envoy.PID != pid
	})
	eventually(t, "the listener to answer again", func() bool { return answers(url) })
	newPID := getStatus(t, f.StateDir).Envoy.PID
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run returned %v on shutdown; want nil", err)
	}
	if err := syscall.Kill(newPID, 0); err == nil {
		t.Errorf("envoy pid %d still alive after wardd stopped", newPID)
	}
	done <- nil // for the cleanup
}

// TestTwiceOnOneSocket: a second wardd on the same state directory fails
// with a clear error and leaves the first one serving.
func TestTwiceOnOneSocket(t *testing.T) {
	f, url := setup(t, "ward.test.inspect")
	start(t, f)
	eventually(t, "the listener to answer", func() bool { return answers(url) })
	f2 := f
	f2.Envoy.Admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	err := run(context.Background(), f2, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if !errors.Is(err, xds.ErrSocketInUse) || !strings.Contains(err.Error(), "another wardd") {
		t.Fatalf("second wardd: %v; want ErrSocketInUse naming another wardd", err)
	}
	if !answers(url) {
		t.Fatal("first wardd's listener stopped answering")
	}
}

// TestModuleErrorReported: a listener naming a filter libward.so does not
// have is rejected by Envoy; wardd reports Envoy's error text.
func TestModuleErrorReported(t *testing.T) {
	f, _ := setup(t, "ward.no-such-filter")
	start(t, f)
	var msg string
	eventually(t, "the rejection to be reported", func() bool {
		for _, n := range getStatus(t, f.StateDir).NACKs {
			msg = n.Message
			return true
		}
		return false
	})
	if msg == "" {
		t.Fatal("empty rejection message")
	}
	t.Logf("envoy rejected the listener: %s", msg)
}

// TestWrongEnvoy: a binary that is not the pinned release is refused with
// the fix.
func TestWrongEnvoy(t *testing.T) {
	f, _ := setup(t, "ward.test.inspect")
	fake := filepath.Join(f.StateDir, "envoy")
	os.WriteFile(fake, []byte("#!/bin/sh\necho 'envoy  version: 0123abcd/1.39.1/Clean/RELEASE/BoringSSL'\n"), 0o755)
	f.Envoy.Binary = fake
	err := run(context.Background(), f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "1.39.1") || !strings.Contains(err.Error(), "make setup") {
		t.Fatalf("run with envoy 1.39.1: %v; want an error naming the version and the fix", err)
	}
	f.Envoy.Binary = filepath.Join(f.StateDir, "missing-envoy")
	if err := run(context.Background(), f, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "make setup") {
		t.Fatalf("run with a missing envoy: %v; want the fix", err)
	}
}

// TestEnvoyOutlivesWardd: wardd killed with SIGKILL leaves Envoy serving;
// the next wardd on the same state directory adopts that Envoy (no second
// Envoy, no restart) and finds its proxy routing and sockets reusable;
// a graceful stop then stops Envoy.
func TestEnvoyOutlivesWardd(t *testing.T) {
	wardd := testenv.File(t, "build/bin/wardd", "run `make build`")
	f, url := setup(t, "ward.test.inspect")
	cfgPath := filepath.Join(f.StateDir, "node.json")
	b, _ := json.Marshal(agent.Config{Node: f.Node, Listeners: f.Listeners})
	os.WriteFile(cfgPath, b, 0o600)
	startWardd := func() *exec.Cmd {
		cmd := exec.Command(wardd, "--state-dir", f.StateDir, "--config", cfgPath, "--envoy", f.Envoy.Binary, "--module-dir", f.Envoy.ModuleDir,
			"--envoy-admin", f.Envoy.Admin, "--concurrency", "1", "--log-level", "warn")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	first := startWardd()
	eventually(t, "the listener to answer", func() bool { return answers(url) })
	st := getStatus(t, f.StateDir)
	if st.Envoy == nil || st.Envoy.PID == 0 || st.Envoy.Starts != 1 {
		t.Fatalf("status = %+v; want envoy started once", st.Envoy)
	}
	pid := st.Envoy.PID
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	first.Process.Kill()
	first.Wait()
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("envoy %d died with wardd: %v", pid, err)
	}
	if !answers(url) {
		t.Fatal("the listener stopped answering when wardd was killed")
	}
	second := startWardd()
	eventually(t, "the second wardd to adopt envoy", func() bool {
		s := getStatus(t, f.StateDir)
		return s.Envoy != nil && s.Envoy.Adopted == 1
	})
	if s := getStatus(t, f.StateDir); s.Envoy.PID != pid || s.Envoy.Starts != 0 {
		t.Fatalf("after restart: envoy %+v; want pid %d adopted, none started", s.Envoy, pid)
	}
	eventually(t, "the listener to answer through the adopted envoy", func() bool { return answers(url) })
	second.Process.Signal(syscall.SIGTERM)
	if err := second.Wait(); err != nil {
		t.Fatalf("wardd on SIGTERM: %v", err)
	}
	eventually(t, "the adopted envoy to stop with a graceful wardd stop", func() bool { return syscall.Kill(pid, 0) != nil })
}

// TestAdminOnUnixSocket: by default Envoy's admin interface is a unix
// socket of mode 0600 in the state directory, not a TCP port any local
// process (or hostNetwork pod) can reach.
func TestAdminOnUnixSocket(t *testing.T) {
	f, url := setup(t, "ward.test.inspect")
	f.Envoy.Admin = ""
	start(t, f)
	eventually(t, "the listener to answer", func() bool { return answers(url) })
	sock := filepath.Join(f.StateDir, "envoy-admin.sock")
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("admin socket: %v", err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode = %v; want a socket with 0600", st.Mode())
	}
	if st, err := os.Stat(f.StateDir); err != nil || st.Mode().Perm()&0o007 != 0 {
		t.Errorf("state dir mode = %v, %v; want no access for others", st.Mode(), err)
	}
	cl, base := envoyproc.AdminClient(sock)
	resp, err := cl.Get(base + "/ready")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin over the unix socket: %v %v", resp, err)
	}
	resp.Body.Close()
	b, _ := os.ReadFile(filepath.Join(f.StateDir, "envoy-bootstrap.json"))
	var boot struct {
		Admin struct {
			Address struct {
				Pipe          *struct{ Path string } `json:"pipe"`
				SocketAddress any                    `json:"socketAddress"`
			} `json:"address"`
		} `json:"admin"`
	}
	if err := json.Unmarshal(b, &boot); err != nil {
		t.Fatal(err)
	}
	if a := boot.Admin.Address; a.Pipe == nil || a.Pipe.Path != sock || a.SocketAddress != nil {
		t.Errorf("bootstrap admin address = %+v; want only the pipe %s", a, sock)
	}
}

// TestExternalEnvoy: with Envoy.External (wardd --envoy-external, the
// Kubernetes chart) wardd starts no Envoy but writes the bootstrap into the
// state directory; an Envoy started from that file alone, as the chart's
// Envoy DaemonSet does, gets its listeners from wardd and serves.
func TestExternalEnvoy(t *testing.T) {
	f, url := setup(t, "ward.test.inspect")
	bin, modDir := f.Envoy.Binary, f.Envoy.ModuleDir
	f.Envoy = agent.EnvoyConfig{External: true, Binary: filepath.Join(f.StateDir, "no-such-envoy"), Admin: f.Envoy.Admin}
	start(t, f)
	bpath := filepath.Join(f.StateDir, "envoy-bootstrap.json")
	eventually(t, "the bootstrap", func() bool {
		_, err := os.Stat(bpath)
		return err == nil
	})
	if st := getStatus(t, f.StateDir); st.Envoy != nil {
		t.Fatalf("status shows a supervised envoy %+v; want none with an external envoy", st.Envoy)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-c", bpath, "--disable-hot-restart", "--concurrency", "1", "-l", "warning")
	cmd.Env = append(os.Environ(), "ENVOY_DYNAMIC_MODULES_SEARCH_PATH="+modDir)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	eventually(t, "the external envoy's listener to answer", func() bool { return answers(url) })
}
