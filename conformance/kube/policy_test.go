package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	wardapi "github.com/wardproxy/ward/agent/api"
	agentkube "github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestPoliciesFromKubernetes is the Star Wars demo with its policies as
// CiliumNetworkPolicy objects on the real API server, through one node's
// agent (BPF datapath and Envoy) whose config has a kubernetes block and
// an empty policy directory: the L3/L4 policy (its peers limited to its
// namespace: an empire ship of another namespace is dropped), then the L7 one applied
// over it live (POST allowed, PUT 403, xwing dropped); an invalid second
// policy (status Valid=False with the field path, a PolicyInvalid Event,
// `ward status` lists it) while the first keeps enforcing; an API-server
// outage in the middle (enforcement unchanged, the status says it is
// stale, then connected again and a change made after the restart is
// enforced); the policy deleted (default allow again).
func TestPoliciesFromKubernetes(t *testing.T) {
	api := kubetest.Shared(t)
	root := testenv.Root(t)
	for _, crd := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		api.ApplyFile(t, filepath.Join(root, "deploy/helm/ward/crds", crd))
	}
	const ns = "kube-policy-sw"
	api.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	_, dc := api.Clients(t)
	ctx, stop := context.WithTimeout(context.Background(), 5*time.Minute)
	defer stop()
	t.Cleanup(func() {
		for _, name := range []string{"rule1", "broken"} {
			_ = dc.Resource(agentkube.CNPResource).Namespace(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	})

	pods := []node.PodSpec{
		{Name: "deathstar", Namespace: ns, Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		{Name: "tiefighter", Namespace: ns, Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		{Name: "xwing", Namespace: ns, Labels: map[string]string{"org": "alliance", "class": "xwing"}},
		// An empire ship of another namespace: a CiliumNetworkPolicy's
		// peers are limited to its own namespace, as in Cilium.
		{Name: "intruder", Namespace: ns + "-other", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
	}
	n := node.New(t, pods...)
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	const nodeName = "kube-policy-node"
	n.Config.Kubernetes = &agentkube.Config{Kubeconfig: api.Kubeconfig(), NodeName: nodeName, HealthInterval: "200ms"}
	n.Start(t, 48000, 9480)

	url := "http://" + n.Pods["deathstar"].IP.String()
	curl := func(from, method string) string {
		path := "/v1/request-landing"
		if method == "PUT" {
			path = "/v1/exhaust-port"
		}
		return n.Curl(ctx, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	expect := func(when string, want map[string]string) {
		t.Helper()
		last := map[string]string{}
		node.Eventually(t, when, func() bool {
			ok := true
			for k, w := range want {
				from, method, _ := strings.Cut(k, " ")
				last[k] = curl(from, method)
				// "*X": the answer ends with X.
				if suffix, ok2 := strings.CutPrefix(w, "*"); ok2 {
					ok = ok && strings.HasSuffix(last[k], suffix)
				} else {
					ok = ok && last[k] == w
				}
			}
			if !ok {
				t.Logf("%s: %v", when, last)
			}
			return ok
		})
	}
	apply := func(file, name string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := kubetest.Decode(b)
		if err != nil || len(objs) != 1 {
			t.Fatalf("%s: %v (%d objects)", file, err, len(objs))
		}
		objs[0].SetNamespace(ns)
		objs[0].SetName(name)
		body, _ := objs[0].MarshalJSON()
		if _, err := api.Apply(ctx, body, kubetest.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cnpStatus := func(name string) (map[string]any, error) {
		o, err := dc.Resource(agentkube.CNPResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		st, _, _ := unstructured.NestedMap(o.Object, "status")
		return st, nil
	}
	condition := func(st map[string]any) (string, string) {
		conds, _ := st["conditions"].([]any)
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "Valid" {
				return fmt.Sprint(m["status"]), fmt.Sprint(m["message"])
			}
		}
		return "", ""
	}

	// No policy: default allow.
	expect("default allow", map[string]string{"xwing POST": "Ship landed 200", "intruder POST": "Ship landed 200"})

	// L3/L4.
	apply("examples/deathstar/l3-l4/sw_l3_l4_policy.yaml", "rule1")
	expect("the L3/L4 CNP enforced", map[string]string{"xwing POST": "error", "intruder POST": "error", "tiefighter POST": "Ship landed 200", "tiefighter PUT": "* 500"})

	// The L7 policy over it, live.
	apply("examples/deathstar/l7/sw_l3_l4_l7_policy.yaml", "rule1")
	l7 := map[string]string{"xwing POST": "error", "tiefighter POST": "Ship landed 200", "tiefighter PUT": "Access denied 403"}
	expect("the L7 CNP enforced", l7)
	node.Eventually(t, "rule1 status: valid, enforcing on the deathstar", func() bool {
		st, err := cnpStatus("rule1")
		if err != nil {
			return false
		}
		s, _ := condition(st)
		nst, _, _ := unstructured.NestedMap(st, "nodes", nodeName)
		return s == "True" && nst["ok"] == true && fmt.Sprint(nst["enforcingEndpoints"]) == "1"
	})

	// `ward endpoint get 1` (the deathstar) names the rule's source and
	// object.
	var ep wardapi.EndpointDetail
	if err := getStatus(n.StateDir, wardapi.EndpointsPath+"/1", &ep); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ep.Rules, func(r wardapi.RuleRef) bool {
		return r.Source == "k8s" && r.Origin == "CiliumNetworkPolicy/"+ns+"/rule1" && slices.Contains(r.Labels, "k8s:io.cilium.k8s.policy.name=rule1")
	}) {
		t.Errorf("deathstar's rules %+v; want rule1 from k8s", ep.Rules)
	}

	// An invalid second policy: reported; rule1 keeps enforcing.
	api.ApplyYAML(t, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken, namespace: "+ns+"}\n"+
		"spec: {endpointSelector: {matchLabels: {class: xwing}}, egress: [{toEntities: [galaxy]}]}\n")
	node.Eventually(t, "broken: Valid=False with the field path", func() bool {
		st, err := cnpStatus("broken")
		if err != nil {
			return false
		}
		s, msg := condition(st)
		return s == "False" && strings.Contains(msg, "spec.egress[0].toEntities[0]")
	})
	cs, _ := api.Clients(t)
	node.Eventually(t, "a PolicyInvalid event on broken", func() bool {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=broken"})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Reason == agentkube.ReasonInvalid && strings.Contains(e.Message, "toEntities") {
				return true
			}
		}
		return false
	})
	// kubectl shows it as with Cilium: the VALID column, and describe
	// names the field path.
	kubectl := testenv.File(t, "build/bin/kubectl", "run `make setup` (scripts/setup.d/80-kube.sh)")
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", api.Kubeconfig(), "get", "cnp", "-n", ns).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get cnp: %v: %s", err, out)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) == 3 {
			rows[f[0]] = f[2] // NAME AGE VALID
		}
	}
	if rows["NAME"] != "VALID" || rows["rule1"] != "True" || rows["broken"] != "False" {
		t.Errorf("kubectl get cnp:\n%s\nwant VALID True for rule1, False for broken", out)
	}
	out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", api.Kubeconfig(), "describe", "cnp", "-n", ns, "broken").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "spec.egress[0].toEntities[0]") || !strings.Contains(string(out), agentkube.ReasonInvalid) {
		t.Errorf("kubectl describe cnp broken: %v:\n%s\nwant the field path and the PolicyInvalid event", err, out)
	}
	ks := n.Agent.Status().Kubernetes
	if ks == nil || len(ks.InvalidPolicies) != 1 || !strings.Contains(ks.InvalidPolicies[0].File, "broken") {
		t.Errorf("ward status kubernetes = %+v; want broken listed as invalid", ks)
	}
	expect("rule1 still enforced beside the invalid policy", l7)

	// The API server goes away: enforcement unchanged, the status says
	// how stale the view is.
	api.StopAPIServer()
	node.Eventually(t, "status: disconnected and stale", func() bool {
		ks := n.Agent.Status().Kubernetes
		return ks != nil && !ks.Connected && ks.StaleSeconds > 0 && !ks.DownSince.IsZero()
	})
	expect("enforcement unchanged during the outage", l7)
	if err := api.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "status: connected again", func() bool {
		ks := n.Agent.Status().Kubernetes
		return ks != nil && ks.Connected && ks.StaleSeconds == 0
	})
	expect("enforcement unchanged after the reconnect", l7)

	// A change after the restart reaches the node (the watches resumed):
	// rule1 deleted, default allow again.
	if err := dc.Resource(agentkube.CNPResource).Namespace(ns).Delete(ctx, "rule1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("rule1 deleted: default allow", map[string]string{"xwing POST": "Ship landed 200", "tiefighter PUT": "* 500"})
}

// getStatus GETs path from wardd's status socket into v.
func getStatus(stateDir, path string, v any) error {
	sock := filepath.Join(stateDir, wardapi.Socket)
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := cl.Get("http://wardd" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
