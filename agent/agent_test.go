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
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/agent/api"
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
	return testenv.File(t, "build/libward.so", "run `make build`")
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
