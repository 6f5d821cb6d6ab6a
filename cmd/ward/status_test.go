package main

import (
	"bytes"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// TestStatus runs `ward status` against a status socket that answers like
// wardd, and without one.
func TestStatus(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"status", "--state-dir", dir}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "wardd is not answering") {
		t.Fatalf("no wardd: exit %d, stderr %q; want 1 and a hint", code, errb.String())
	}
	l, err := net.Listen("unix", filepath.Join(dir, "wardd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(`{"xdsStreams":3,"acked":{"type.googleapis.com/ward.npds.v1.NetworkPolicy":"p7"},` +
			`"nacks":[{"TypeURL":"type.googleapis.com/envoy.config.listener.v3.Listener","Version":"4","Message":"Failed to initialize dynamic module"}],` +
			`"envoy":{"pid":4242,"starts":2,"lastError":"boom"}}`))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	out.Reset()
	errb.Reset()
	if code := run([]string{"status", "--state-dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	for _, want := range []string{"envoy: pid 4242, started 2 time(s)", "envoy last error: boom", "xds streams: 3",
		"acked type.googleapis.com/ward.npds.v1.NetworkPolicy: p7", `rejected type.googleapis.com/envoy.config.listener.v3.Listener (still running "4"): Failed to initialize dynamic module`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("ward status output lacks %q:\n%s", want, out.String())
		}
	}
}
