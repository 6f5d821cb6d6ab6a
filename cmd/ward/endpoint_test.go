package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/agent/api"
)

const introspectPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rule1
  namespace: default
spec:
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  labels:
  - {key: team, value: empire-security}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - fromCIDR: [192.0.2.0/24]
`

const introspectPolicy2 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: xwing-out
spec:
  endpointSelector:
    matchLabels: {class: xwing}
  egress:
  - toEndpoints:
    - matchLabels: {class: deathstar}
`

// liveAgent runs an agent in-process (no Envoy, no datapath: no root
// needed) with the Star Wars endpoints and two policies, and returns its
// state directory once the first policy is published.
func liveAgent(t *testing.T) string {
	t.Helper()
	// A short path: the status socket's path must fit sun_path.
	dir, err := os.MkdirTemp("", "ward-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pol := filepath.Join(dir, "policies")
	if err := os.MkdirAll(pol, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"deathstar.yaml": introspectPolicy, "xwing.yaml": introspectPolicy2} {
		if err := os.WriteFile(filepath.Join(pol, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := agent.Config{
		Node:      "cli-test",
		StateDir:  filepath.Join(dir, "state"),
		PolicyDir: pol,
		Envoy:     agent.EnvoyConfig{Disabled: true},
		Endpoints: []agent.Endpoint{
			{Name: "deathstar", ID: 1, IPs: []string{"10.199.0.10"}, Labels: map[string]string{"org": "empire", "class": "deathstar"}},
			{Name: "tiefighter", ID: 2, IPs: []string{"10.199.0.11"}, Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
			{Name: "xwing", ID: 3, IPs: []string{"10.199.0.12"}, Labels: map[string]string{"org": "alliance", "class": "xwing"}},
		},
	}
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready after 30s")
	}
	// The status socket is served by Run; wait until it answers.
	for i := 0; ; i++ {
		var st api.Status
		if err := agentGet(cfg.StateDir, api.StatusPath, &st); err == nil {
			break
		} else if i == 300 {
			t.Fatalf("status socket: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return cfg.StateDir
}

func runOK(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("ward %s = %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	}
	return out.String()
}

// TestIntrospectLiveAgent runs the troubleshooting commands against a
// live agent and checks what they say against its configuration.
func TestIntrospectLiveAgent(t *testing.T) {
	sd := liveAgent(t)

	t.Run("endpoint list", func(t *testing.T) {
		var eps []api.EndpointDetail
		if err := json.Unmarshal([]byte(runOK(t, "endpoint", "list", "--state-dir", sd, "-o", "json")), &eps); err != nil {
			t.Fatal(err)
		}
		if len(eps) != 3 {
			t.Fatalf("got %d endpoints; want 3: %+v", len(eps), eps)
		}
		type want struct {
			name            string
			ingress, egress bool
		}
		for i, w := range []want{{"deathstar", true, false}, {"tiefighter", false, false}, {"xwing", false, true}} {
			e := eps[i]
			if e.Name != w.name || e.State != api.StateReady || e.EnforceIngress != w.ingress || e.EnforceEgress != w.egress || e.Identity == 0 || e.Audit {
				t.Errorf("endpoint %d = %+v; want %s ready, enforcing ingress %v egress %v, an identity, no audit", i, e, w.name, w.ingress, w.egress)
			}
		}
		if !slices.Contains(eps[0].Labels, "k8s:class=deathstar") || !slices.Contains(eps[0].Labels, "k8s:io.kubernetes.pod.namespace=default") {
			t.Errorf("deathstar labels %q", eps[0].Labels)
		}
		table := runOK(t, "endpoint", "list", "--state-dir", sd)
		for _, w := range []string{"POLICY (ingress)", "k8s:class=deathstar", "10.199.0.10", "Enabled", "ready"} {
			if !strings.Contains(table, w) {
				t.Errorf("endpoint list lacks %q:\n%s", w, table)
			}
		}
	})

	t.Run("endpoint get", func(t *testing.T) {
		var e api.EndpointDetail
		if err := json.Unmarshal([]byte(runOK(t, "endpoint", "get", "1", "--state-dir", sd, "-o", "json")), &e); err != nil {
			t.Fatal(err)
		}
		if len(e.Rules) != 1 {
			t.Fatalf("deathstar rules %+v; want rule1", e.Rules)
		}
		r := e.Rules[0]
		if r.Policy != "CiliumNetworkPolicy/default/rule1" || r.Source != "directory" || !strings.HasSuffix(r.Origin, "deathstar.yaml") ||
			!slices.Equal(r.Paths, []string{"spec.ingress[0]", "spec.ingress[1]"}) || !slices.Contains(r.Labels, "directory:io.cilium.k8s.policy.name=rule1") {
			t.Errorf("deathstar rule %+v", r)
		}
		text := runOK(t, "endpoint", "get", "3", "--state-dir", sd)
		for _, w := range []string{"state:             ready", "egress policy:     Enabled", "CiliumNetworkPolicy/default/xwing-out", "directory"} {
			if !strings.Contains(text, w) {
				t.Errorf("endpoint get 3 lacks %q:\n%s", w, text)
			}
		}
		var out, errb bytes.Buffer
		if code := run([]string{"endpoint", "get", "9", "--state-dir", sd}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "endpoint 9 not found") {
			t.Errorf("endpoint get 9 = %d, %q; want 1 and not found", code, errb.String())
		}
	})

	t.Run("policy get", func(t *testing.T) {
		var rules []map[string]any
		if err := json.Unmarshal([]byte(runOK(t, "policy", "get", "--state-dir", sd, "-o", "json")), &rules); err != nil {
			t.Fatal(err)
		}
		if len(rules) != 2 {
			t.Fatalf("got %d rules; want 2", len(rules))
		}
		// Filtered by a label: only rule1, in Cilium's shape.
		out := runOK(t, "policy", "get", "io.cilium.k8s.policy.name=rule1", "--state-dir", sd, "-o", "json")
		if err := json.Unmarshal([]byte(out), &rules); err != nil {
			t.Fatal(err)
		}
		if len(rules) != 1 || rules[0]["endpointSelector"] == nil {
			t.Fatalf("policy get rule1 = %s", out)
		}
		for _, w := range []string{`"source": "directory"`, `"key": "io.cilium.k8s.policy.name"`, `"value": "rule1"`, `"key": "team"`, `"source": "unspec"`} {
			if !strings.Contains(out, w) {
				t.Errorf("policy get rule1 lacks %s:\n%s", w, out)
			}
		}
		// The rule's own label selects it too; a label nobody has selects
		// nothing.
		table := runOK(t, "policy", "get", "unspec:team=empire-security", "--state-dir", sd)
		if !strings.Contains(table, "CiliumNetworkPolicy/default/rule1") || strings.Contains(table, "xwing-out") || !strings.Contains(table, "Revision: ") {
			t.Errorf("policy get team=empire-security:\n%s", table)
		}
		if out := runOK(t, "policy", "get", "nope=1", "--state-dir", sd, "-o", "json"); strings.TrimSpace(out) != "[]" {
			t.Errorf("policy get nope=1 = %s; want []", out)
		}
	})

	t.Run("identity", func(t *testing.T) {
		var e api.EndpointDetail
		if err := json.Unmarshal([]byte(runOK(t, "endpoint", "get", "1", "--state-dir", sd, "-o", "json")), &e); err != nil {
			t.Fatal(err)
		}
		var ids []api.Identity
		if err := json.Unmarshal([]byte(runOK(t, "identity", "list", "--state-dir", sd, "-o", "json")), &ids); err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		for _, id := range ids {
			kinds[id.Kind]++
		}
		// 3 endpoints with distinct labels, the CIDR of rule1, and the
		// reserved ones (world, host, ...).
		if kinds["endpoint"] != 3 || kinds["cidr"] != 1 || kinds["reserved"] < 2 {
			t.Errorf("identity kinds %v", kinds)
		}
		var id api.Identity
		if err := json.Unmarshal([]byte(runOK(t, "identity", "get", jsonNum(e.Identity), "--state-dir", sd, "-o", "json")), &id); err != nil {
			t.Fatal(err)
		}
		if id.ID != e.Identity || !slices.Equal(id.Labels, e.Labels) {
			t.Errorf("identity get %d = %+v; want the deathstar's labels %q", e.Identity, id, e.Labels)
		}
		table := runOK(t, "identity", "get", "2", "--state-dir", sd)
		if !strings.Contains(table, "reserved:world") {
			t.Errorf("identity get 2 (world):\n%s", table)
		}
	})

	t.Run("no datapath", func(t *testing.T) {
		if out := runOK(t, "ip", "list", "--state-dir", sd, "-o", "json"); strings.TrimSpace(out) != "[]" {
			t.Errorf("ip list without a datapath = %s; want []", out)
		}
		var out, errb bytes.Buffer
		if code := run([]string{"fqdn", "cache", "list", "--state-dir", sd}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no DNS proxy") {
			t.Errorf("fqdn cache list without a DNS proxy = %d, %q", code, errb.String())
		}
		v := runOK(t, "status", "--state-dir", sd, "--verbose")
		for _, w := range []string{"endpoint deathstar", "POLICY (ingress)", "identities: ", "endpoint 3", "ipcache: 0 prefixes", "fqdn cache: no DNS proxy"} {
			if !strings.Contains(v, w) {
				t.Errorf("status --verbose lacks %q:\n%s", w, v)
			}
		}
	})
}

func jsonNum(n uint32) string {
	b, _ := json.Marshal(n)
	return string(b)
}
