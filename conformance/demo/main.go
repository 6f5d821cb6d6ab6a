// Command demo is `make demo`: it runs ward for real, as a user runs it on
// a Linux host without Kubernetes (docs/run-without-kubernetes.md) — pods
// are network namespaces with veth pairs, wardd (the agent) loads the eBPF
// datapath onto their veths and supervises the official Envoy with
// libward.so — in front of the Star Wars Death Star. It plays the seed's L7
// demo with curl inside the pods, edits the policy file while everything
// runs, prints what it saw and `ward status` as a table, and stops and
// removes everything it started. It needs root.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
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

func run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo runs the eBPF datapath: run it as root (make demo)")
	}
	root, _ := os.Getwd()
	for _, f := range []string{"build/bin/wardd", "build/bin/ward", "build/libward.so", "build/envoy"} {
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

	// The pods: network namespaces with veth pairs to this host.
	topo, err := netns.Create()
	if err != nil {
		return err
	}
	defer topo.Close()
	pods := map[string]*netns.Pod{}
	specs := []agent.Endpoint{
		{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}},
	}
	for i := range specs {
		p, err := topo.Add(netns.PodConfig{Name: specs[i].Name, Labels: specs[i].Labels})
		if err != nil {
			return err
		}
		pods[specs[i].Name] = p
		specs[i].ID = uint64(i + 1)
		specs[i].IPs = []string{p.IP.String()}
		specs[i].Interface = p.HostIf
	}
	ds, err := pods["deathstar"].Listen("tcp", ":80")
	if err != nil {
		return err
	}
	go deathstar.Serve(ctx, ds, deathstar.New()) //nolint:errcheck

	// wardd's pins in a private bpffs, removed at the end.
	pin := filepath.Join(dir, "bpf")
	os.MkdirAll(pin, 0o700)
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	defer func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) }()

	// The node config and the policy directory, as docs/node-config.md
	// describes them.
	policyDir := filepath.Join(dir, "policies")
	os.MkdirAll(policyDir, 0o755)
	if err := os.WriteFile(filepath.Join(policyDir, "sw_l3_l4_l7_policy.yaml"), []byte(landing), 0o644); err != nil {
		return err
	}
	cfg := agent.Config{Node: "ward-demo", PolicyDir: policyDir, Endpoints: specs,
		// Ports and routing of their own, so the demo runs beside a node
		// using the defaults (and beside the tests).
		Datapath: agent.DatapathConfig{Enabled: true, PinDir: pin, RoutingTable: 2044, RoutingPriority: 9044,
			HTTPIngressPort: 15801, KafkaIngressPort: 15803, DNSPort: 15853, EgressHTTPBasePort: 15810, EgressKafkaBasePort: 15830,
			TLSIngressPort: 15802, EgressTLSBasePort: 15840}}
	// wardd leaves its proxy routing in place when it stops (Envoy may
	// outlive it); the demo removes it, as `ward bpf cleanup` does.
	defer redirect.RemoveProxyRouting(redirect.Routing{Table: cfg.Datapath.RoutingTable, Priority: cfg.Datapath.RoutingPriority})
	b, _ := json.MarshalIndent(cfg, "", "  ")
	cfgPath := filepath.Join(dir, "node.json")
	os.WriteFile(cfgPath, b, 0o644)

	state := filepath.Join(dir, "state")
	fmt.Printf("ward demo: wardd + Envoy %s + libward.so, the eBPF datapath on three pods (network namespaces)\n", envoyVersion(root))
	wardd := exec.Command(filepath.Join(root, "build/bin/wardd"), "--state-dir", state, "--config", cfgPath,
		"--module-dir", filepath.Join(root, "build"), "--envoy", filepath.Join(root, "build/envoy"), "--concurrency", "1", "--log-level", "warn")
	wardd.Stdout, wardd.Stderr = os.Stdout, os.Stderr
	wardd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := wardd.Start(); err != nil {
		return err
	}
	defer func() {
		wardd.Process.Signal(syscall.SIGTERM)
		wardd.Wait()
	}()
	url := "http://" + pods["deathstar"].IP.String()
	curl := func(from, method, path string) string {
		out, err := pods[from].Run(ctx, "curl", "-s", "-X", method, "--connect-timeout", "2", "--max-time", "5", "-w", "\n%{http_code}", url+path)
		if err != nil {
			return "dropped (no connection)"
		}
		s := strings.TrimSpace(out)
		i := strings.LastIndex(s, "\n")
		if i < 0 {
			return s
		}
		return s[i+1:] + " " + strings.Join(strings.Fields(s[:i]), " ")
	}
	// In force once Envoy answers the tiefighter's PUT with ward's 403.
	deadline := time.Now().Add(90 * time.Second)
	for !strings.HasPrefix(curl("tiefighter", "PUT", "/v1/exhaust-port"), "403") {
		if time.Now().After(deadline) {
			return fmt.Errorf("the policy is not in force after 90 s")
		}
		time.Sleep(200 * time.Millisecond)
	}

	var rows []row
	add := func(what, want, got string) { rows = append(rows, row{what, want, got}) }
	add("tiefighter  POST /v1/request-landing", "200 Ship landed", curl("tiefighter", "POST", "/v1/request-landing"))
	add("tiefighter  PUT  /v1/exhaust-port", "403 Access denied", curl("tiefighter", "PUT", "/v1/exhaust-port"))
	add("tiefighter  GET  /v1 (not in the rules)", "403 Access denied", curl("tiefighter", "GET", "/v1"))
	add("xwing       POST /v1/request-landing", "dropped (no connection)", curl("xwing", "POST", "/v1/request-landing"))

	// Edit the policy file while everything runs: wardd re-resolves, the
	// filters inside Envoy swap the compiled rules; no listener changes.
	start := time.Now()
	os.WriteFile(filepath.Join(policyDir, "sw_l3_l4_l7_policy.yaml"), []byte(landingAndExhaust), 0o644)
	got := ""
	for time.Since(start) < 15*time.Second {
		if got = curl("tiefighter", "PUT", "/v1/exhaust-port"); !strings.HasPrefix(got, "403") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	add(fmt.Sprintf("after editing the policy (%.0f ms): tiefighter PUT /v1/exhaust-port", float64(time.Since(start).Microseconds())/1000), "500 Panic: deathstar exploded (reached the upstream)", got)
	add("xwing       PUT  /v1/exhaust-port", "dropped (no connection)", curl("xwing", "PUT", "/v1/exhaust-port"))

	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nREQUEST\tEXPECTED\tGOT\tOK")
	ok := true
	for _, r := range rows {
		pass := strings.HasPrefix(r.got, r.want)
		if strings.HasPrefix(r.what, "after editing") {
			pass = strings.HasPrefix(r.got, "500 Panic: deathstar exploded")
		}
		ok = ok && pass
		got := r.got
		if len(got) > 40 {
			got = got[:37] + "..."
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\n", r.what, r.want, got, pass)
	}
	w.Flush()
	status, _ := exec.Command(filepath.Join(root, "build/bin/ward"), "status", "--state-dir", state).CombinedOutput()
	fmt.Printf("\n$ ward status\n%s", status)
	if !ok {
		return fmt.Errorf("some results differ from what was expected")
	}
	fmt.Println("\nall as expected; stopping wardd and Envoy, removing the pods and the pins")
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
