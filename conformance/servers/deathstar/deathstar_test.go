package deathstar

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/internal/testenv"
)

// start serves h on 127.0.0.1:0 for the test's lifetime.
func start(t *testing.T, h http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + lis.Addr().String()
}

func clients() map[string]*http.Client {
	// Cleartext HTTP/2 with prior knowledge, as curl --http2-prior-knowledge.
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	return map[string]*http.Client{
		"HTTP/1.1": {Timeout: 30 * time.Second},
		"HTTP/2.0": {Timeout: 30 * time.Second, Transport: h2c},
	}
}

func TestDeathstar(t *testing.T) {
	base := start(t, New())
	tests := []struct {
		method, path string
		status       int
		body         string // substring
	}{
		{method: "POST", path: "/v1/request-landing", status: 200, body: "Ship landed"},
		{method: "PUT", path: "/v1/exhaust-port", status: 500, body: "Panic: deathstar exploded"},
		{method: "GET", path: "/v1", status: 200, body: `"PUT   /v1/exhaust-port"`},
		{method: "GET", path: "/v1/", status: 200, body: `"name": "Death Star"`},
		{method: "GET", path: "/", status: 200, body: `"model": "DS-1 Orbital Battle Station"`},
		{method: "GET", path: "/v1/healthz", status: 200, body: "ok"},
		{method: "PUT", path: "/v1/cargobay", status: 200, body: "Cargo loaded"},
		{method: "GET", path: "/v1/hyper-matter-reactor/status", status: 200, body: "stable"},
		{method: "GET", path: "/v1/request-landing", status: 405},
		{method: "GET", path: "/v2/nothing", status: 404},
	}
	for proto, c := range clients() {
		for _, tt := range tests {
			t.Run(proto+" "+tt.method+" "+tt.path, func(t *testing.T) {
				req, err := http.NewRequest(tt.method, base+tt.path, nil)
				if err != nil {
					t.Fatal(err)
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				if resp.Proto != proto {
					t.Errorf("proto = %s; want %s", resp.Proto, proto)
				}
				if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.body) {
					t.Errorf("%s %s = %d %q; want %d containing %q", tt.method, tt.path, resp.StatusCode, b, tt.status, tt.body)
				}
			})
		}
	}
}

func TestEcho(t *testing.T) {
	base := start(t, NewEcho())
	for proto, c := range clients() {
		t.Run(proto, func(t *testing.T) {
			req, err := http.NewRequest("PUT", base+"/troop_logs/log/1?refresh=true", strings.NewReader(`{"x":1}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Add("X-Token", "a")
			req.Header.Add("X-Token", "b")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e Echo
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if e.Method != "PUT" || e.Path != "/troop_logs/log/1?refresh=true" || e.Proto != proto || strings.Join(e.Headers["x-token"], ",") != "a,b" {
				t.Errorf("echo = %+v; want PUT /troop_logs/log/1?refresh=true %s with x-token a,b", e, proto)
			}
		})
	}
}

func TestCurl(t *testing.T) {
	curl := testenv.RequireCommand(t, "curl")
	base := start(t, New())
	for _, args := range [][]string{
		{"-s", "-XPOST", base + "/v1/request-landing"},
		{"-s", "--http2-prior-knowledge", "-XPOST", base + "/v1/request-landing"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, curl, args...).CombinedOutput()
		cancel()
		if err != nil || string(out) != Landed {
			t.Errorf("curl %v = %q, %v; want %q", args, out, err, Landed)
		}
	}
}
