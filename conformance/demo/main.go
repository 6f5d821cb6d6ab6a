// Command demo is `make demo`: it starts ward for real — wardd (the
// agent) supervising the official Envoy with libward.so — in front of the
// Star Wars Death Star service, plays the seed's L7 demo with curl, edits
// the policy file while everything runs, sends a TCP stream through a ward
// network filter, prints what it saw as a table, and stops everything it
// started.
//
// Without the BPF redirect, clients talk to Envoy's listener directly:
// tiefighter and xwing are told apart by their source address (127.0.0.2
// and 127.0.0.3, bound with curl --interface), which the agent maps to
// their identities.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/wardproxy/ward/conformance/servers/deathstar"
)

const landing = `apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: "POST"
          path: "/v1/request-landing"
`

// The edited policy also lets the empire PUT /v1/exhaust-port.
const landingAndExhaust = landing + `        - method: "PUT"
          path: "/v1/exhaust-port"
`

type row struct{ what, want, got string }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func run() error {
	root, _ := os.Getwd()
	for _, f := range []string{"build/bin/wardd", "build/test/libward.so", "build/envoy"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			return fmt.Errorf("%s missing: run `make demo` from the repository root", f)
		}
	}
	dir, err := os.MkdirTemp("", "ward-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The Death Star (the real upstream) and a TCP echo server.
	ds, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go deathstar.Serve(ctx, ds, deathstar.New()) //nolint:errcheck
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go serveEcho(echo)

	policyDir := filepath.Join(dir, "policies")
	os.MkdirAll(policyDir, 0o755)
	if err := os.WriteFile(filepath.Join(policyDir, "sw_l3_l4_l7_policy.yaml"), []byte(landing), 0o644); err != nil {
		return err
	}
	httpPort, tcpPort, admin := freePort(), freePort(), freePort()
	cfg := map[string]any{
		"node":      "ward-demo",
		"policyDir": policyDir,
		"endpoints": []map[string]any{
			{"name": "deathstar", "id": 1, "ips": []string{"127.0.0.1"}, "labels": map[string]string{"org": "empire", "class": "deathstar"}},
			{"name": "tiefighter", "id": 2, "ips": []string{"127.0.0.2"}, "labels": map[string]string{"org": "empire", "class": "tiefighter"}, "remote": true},
			{"name": "xwing", "id": 3, "ips": []string{"127.0.0.3"}, "labels": map[string]string{"org": "alliance", "class": "xwing"}, "remote": true},
		},
		"listeners": []map[string]any{
			{"name": "deathstar-http", "kind": "http", "address": "127.0.0.1", "port": httpPort, "upstream": ds.Addr().String(),
				"endpoint": "deathstar", "policyPort": 80, "accessLog": filepath.Join(dir, "access.jsonl")},
			{"name": "echo-tcp", "kind": "tcp", "address": "127.0.0.1", "port": tcpPort, "upstream": echo.Addr().String(),
				"filters": []string{"ward.test.passthrough"}},
		},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	cfgPath := filepath.Join(dir, "wardd.json")
	os.WriteFile(cfgPath, b, 0o644)

	fmt.Printf("ward demo: wardd + Envoy %s + libward.so in front of the Death Star\n", envoyVersion(root))
	// The test module (build/test): the TCP echo listener uses
	// ward.test.passthrough, which the production libward.so does not have.
	wardd := exec.Command(filepath.Join(root, "build/bin/wardd"), "--state-dir", filepath.Join(dir, "state"), "--config", cfgPath,
		"--module-dir", filepath.Join(root, "build", "test"), "--envoy", filepath.Join(root, "build/envoy"),
		"--envoy-admin", fmt.Sprintf("127.0.0.1:%d", admin), "--concurrency", "1", "--log-level", "warn")
	wardd.Stdout, wardd.Stderr = os.Stdout, os.Stderr
	wardd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := wardd.Start(); err != nil {
		return err
	}
	defer func() {
		wardd.Process.Signal(syscall.SIGTERM)
		wardd.Wait()
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	if err := waitHTTP(base+"/v1", 60*time.Second); err != nil {
		return fmt.Errorf("envoy listener not up: %w", err)
	}

	var rows []row
	add := func(what, want, got string) { rows = append(rows, row{what, want, got}) }
	add("tiefighter  POST /v1/request-landing", "200 Ship landed", curl("127.0.0.2", "POST", base+"/v1/request-landing"))
	add("tiefighter  PUT  /v1/exhaust-port", "403 Access denied", curl("127.0.0.2", "PUT", base+"/v1/exhaust-port"))
	add("xwing       POST /v1/request-landing", "403 Access denied", curl("127.0.0.3", "POST", base+"/v1/request-landing"))
	add("tiefighter  GET  /v1 (not in the rules)", "403 Access denied", curl("127.0.0.2", "GET", base+"/v1"))

	// Edit the policy file while everything runs: wardd re-resolves, the
	// filters inside Envoy swap the compiled rules; no listener changes.
	start := time.Now()
	os.WriteFile(filepath.Join(policyDir, "sw_l3_l4_l7_policy.yaml"), []byte(landingAndExhaust), 0o644)
	got := ""
	for time.Since(start) < 15*time.Second {
		if got = curl("127.0.0.2", "PUT", base+"/v1/exhaust-port"); !strings.HasPrefix(got, "403") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	add(fmt.Sprintf("after editing the policy (%.0f ms): tiefighter PUT /v1/exhaust-port", float64(time.Since(start).Microseconds())/1000), "500 Panic: deathstar exploded (reached the upstream)", got)
	add("xwing       PUT  /v1/exhaust-port", "403 Access denied", curl("127.0.0.3", "PUT", base+"/v1/exhaust-port"))

	// 1 MiB through a network filter that drains and re-injects every byte.
	sent, back, same := tcpEcho(fmt.Sprintf("127.0.0.1:%d", tcpPort), 1<<20)
	add("TCP echo through ward's network filter", "1048576 bytes back, identical", fmt.Sprintf("%d bytes back, identical=%v (sent %d)", back, same, sent))

	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nREQUEST\tEXPECTED\tGOT\tOK")
	ok := true
	for _, r := range rows {
		pass := strings.HasPrefix(r.got, r.want)
		if strings.HasPrefix(r.what, "after editing") {
			pass = strings.HasPrefix(r.got, "500 Panic: deathstar exploded")
		}
		if r.what == "TCP echo through ward's network filter" {
			pass = same && back == 1<<20
		}
		ok = ok && pass
		got := r.got
		if len(got) > 40 {
			got = got[:37] + "..."
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\n", r.what, r.want, got, pass)
	}
	w.Flush()
	if b, err := os.ReadFile(filepath.Join(dir, "access.jsonl")); err == nil {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		fmt.Printf("\nflow records written by the filter: %d; the first one:\n%s\n", len(lines), lines[0])
	}
	if !ok {
		return fmt.Errorf("some results differ from what was expected")
	}
	fmt.Println("\nall as expected; stopping wardd and Envoy")
	return nil
}

func envoyVersion(root string) string {
	out, _ := exec.Command(filepath.Join(root, "build/envoy"), "--version").Output()
	_, v, _ := strings.Cut(string(out), "version: ")
	if f := strings.Split(v, "/"); len(f) > 1 {
		return f[1]
	}
	return "?"
}

func curl(src, method, url string) string {
	out, err := exec.Command("curl", "-s", "--interface", src, "-X", method, "--max-time", "10", "-w", "\n%{http_code}", url).Output()
	if err != nil {
		return "curl error: " + err.Error()
	}
	s := strings.TrimSpace(string(out))
	i := strings.LastIndex(s, "\n")
	if i < 0 {
		return s
	}
	body := strings.Join(strings.Fields(s[:i]), " ")
	return s[i+1:] + " " + body
}

func waitHTTP(url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func serveEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); io.Copy(c, c) }()
	}
}

func tcpEcho(addr string, n int) (int, int, bool) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, 0, false
	}
	defer c.Close()
	payload := make([]byte, n)
	rand.Read(payload)
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, _ := io.ReadAll(c)
	return n, len(got), bytes.Equal(got, payload)
}
