package datapath

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// memcachePolicy follows Cilium's memcached example: the a-wing may set
// and get its own key, the x-wing may only get.
const memcachePolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: memcached}
spec:
  endpointSelector: {matchLabels: {app: memcd-server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a-wing}}]
    toPorts:
    - ports: [{port: "11211", protocol: TCP}]
      rules:
        l7proto: memcache
        l7:
        - command: set
          keyExact: awing
        - command: get
          keyExact: awing
  - fromEndpoints: [{matchLabels: {app: x-wing}}]
    toPorts:
    - ports: [{port: "11211", protocol: TCP}]
      rules:
        l7proto: memcache
        l7:
        - command: get
`

// TestWarddMemcached: generic L7 (l7proto: memcache) through wardd with
// Debian's memcached and libmemcached's real clients (memccp, memccat),
// in both protocols: allowed commands reach the server, denied ones get
// the protocol's own error from Envoy and never reach it. The a-wing has
// egress memcache rules too: both its egress and the server's ingress
// rules apply, on its egress listener.
func TestWarddMemcached(t *testing.T) {
	testenv.RequireCommand(t, "memcached")
	testenv.RequireCommand(t, "memccp")
	testenv.RequireCommand(t, "memccat")
	n := node.New(t,
		node.PodSpec{Name: "memcd", Labels: map[string]string{"app": "memcd-server"}},
		node.PodSpec{Name: "awing", Labels: map[string]string{"app": "a-wing"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"app": "x-wing"}},
		node.PodSpec{Name: "r2d2", Labels: map[string]string{"app": "r2d2"}})
	srv := n.Pods["memcd"]
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	startMemcached(t, ctx, srv)
	n.WritePolicy(t, "memcached.yaml", memcachePolicy)
	// The a-wing's own egress rules allow more (any key); its requests go
	// through its egress listener, which applies the server's ingress
	// rules too (chained ingress): set xwing stays denied.
	n.WritePolicy(t, "awing-egress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: awing-egress}
spec:
  endpointSelector: {matchLabels: {app: a-wing}}
  egress:
  - toEndpoints: [{matchLabels: {app: memcd-server}}]
    toPorts:
    - ports: [{port: "11211", protocol: TCP}]
      rules:
        l7proto: memcache
        l7:
        - command: set
        - command: get
`)
	// The line-based test protocol (l7proto: r2d2) beside it: a server
	// answering OK to every line; the x-wing may only READ public files.
	ln, err := n.Pods["r2d2"].Listen("tcp", ":8000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "OK %s\r\n", strings.TrimSpace(sc.Text()))
				}
			}()
		}
	}()
	n.WritePolicy(t, "r2d2.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: r2d2}
spec:
  endpointSelector: {matchLabels: {app: r2d2}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: x-wing}}]
    toPorts:
    - ports: [{port: "8000", protocol: TCP}]
      rules:
        l7proto: r2d2
        l7:
        - cmd: READ
          file: "^public/"
`)
	n.Start(t, 38900, 9719)

	file, run := memcClients(t, ctx, n, srv)
	awing := file("awing", "a-wing was here")
	node.Eventually(t, "the a-wing to store its key", func() bool { _, ok := run("awing", "memccp", false, awing); return ok })
	for _, binary := range []bool{false, true} {
		proto := map[bool]string{false: "text", true: "binary"}[binary]
		if out, ok := run("awing", "memccp", binary, file("awing", "a-wing "+proto)); !ok {
			t.Errorf("%s: a-wing set awing refused: %s", proto, out)
		}
		if out, ok := run("awing", "memccat", binary, "awing"); !ok || out != "a-wing "+proto {
			t.Errorf("%s: a-wing get awing = %q, %v; want its value", proto, out, ok)
		}
		if out, ok := run("awing", "memccp", binary, file("xwing", "intruder")); ok {
			t.Errorf("%s: a-wing set xwing allowed: %s", proto, out)
		}
		if out, ok := run("xwing", "memccat", binary, "awing"); !ok || out != "a-wing "+proto {
			t.Errorf("%s: x-wing get awing = %q, %v; want the value (x-wing may get)", proto, out, ok)
		}
		if out, ok := run("xwing", "memccp", binary, file("awing", "overwritten")); ok {
			t.Errorf("%s: x-wing set awing allowed: %s", proto, out)
		}
	}
	// r2d2: the allowed READ reaches the server, the others are answered
	// ERROR by Envoy in their turn.
	conn, err := n.Pods["xwing"].Dial(ctx, "tcp", n.Pods["r2d2"].IP.String()+":8000")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprint(conn, "READ public/plans\r\nWRITE public/plans\r\nREAD secret/plans\r\nREAD public/map\r\n")
	rd := bufio.NewReader(conn)
	var got []string
	for range 4 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("r2d2 answers %q: %v", got, err)
		}
		got = append(got, strings.TrimSpace(line))
	}
	if want := []string{"OK READ public/plans", "ERROR", "ERROR", "OK READ public/map"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("r2d2 answers %q, want %q", got, want)
	}

	// The denied sets never reached the server: the value is the a-wing's.
	if out, _ := run("xwing", "memccat", false, "awing"); out != "a-wing binary" {
		t.Errorf("after the denied sets, awing = %q; want the a-wing's value", out)
	}
	if out, ok := run("awing", "memccat", false, "xwing"); ok {
		t.Errorf("xwing exists (%q): a denied set reached the server", out)
	}
}

// startMemcached runs Debian's memcached in pod on its address, port
// 11211 (TCP only), until the test ends.
func startMemcached(t *testing.T, ctx context.Context, pod *netns.Pod) {
	t.Helper()
	mc := pod.Command(ctx, "memcached", "-u", "root", "-l", pod.IP.String(), "-p", "11211", "-U", "0")
	if err := mc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mc.Process.Kill(); mc.Wait() })
}

// memcClients returns file (a file named key holding value, for memccp)
// and run (libmemcached's memccp or memccat in a pod of n against srv, in
// the text or binary protocol; its trimmed output and whether it
// succeeded).
func memcClients(t *testing.T, ctx context.Context, n *node.Node, srv *netns.Pod) (file func(key, value string) string, run func(pod, cmd string, binary bool, arg string) (string, bool)) {
	dir := t.TempDir()
	file = func(key, value string) string {
		p := filepath.Join(dir, key)
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	servers := "--servers=" + srv.IP.String() + ":11211"
	run = func(pod, cmd string, binary bool, arg string) (string, bool) {
		args := []string{servers}
		if binary {
			args = append(args, "--binary")
		}
		out, err := n.Pods[pod].Run(ctx, cmd, append(args, arg)...)
		return strings.TrimSpace(out), err == nil
	}
	return file, run
}

// TestWarddMemcachedAudit: in policy audit mode the memcache requests the
// policy denies (the x-wing's set) reach memcached, in both protocols,
// instead of getting the access error.
func TestWarddMemcachedAudit(t *testing.T) {
	testenv.RequireCommand(t, "memcached")
	testenv.RequireCommand(t, "memccp")
	testenv.RequireCommand(t, "memccat")
	n := node.New(t,
		node.PodSpec{Name: "memcd", Labels: map[string]string{"app": "memcd-server"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"app": "x-wing"}})
	srv := n.Pods["memcd"]
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	startMemcached(t, ctx, srv)
	n.WritePolicy(t, "memcached.yaml", memcachePolicy)
	n.Config.PolicyAuditMode = true
	n.Start(t, 49950, 9500)

	file, run := memcClients(t, ctx, n, srv)
	// The policy in force: the x-wing may get; its set is audited.
	node.Eventually(t, "the x-wing's denied set to reach memcached (audit)", func() bool {
		_, ok := run("xwing", "memccp", false, file("awing", "first"))
		return ok
	})
	for _, binary := range []bool{false, true} {
		proto := map[bool]string{false: "text", true: "binary"}[binary]
		if out, ok := run("xwing", "memccp", binary, file("awing", "x-wing "+proto)); !ok {
			t.Errorf("%s: x-wing set awing in audit mode refused: %s", proto, out)
		}
		if out, ok := run("xwing", "memccat", binary, "awing"); !ok || out != "x-wing "+proto {
			t.Errorf("%s: x-wing get awing = %q, %v; want the value it set (audited, not denied)", proto, out, ok)
		}
	}
}
