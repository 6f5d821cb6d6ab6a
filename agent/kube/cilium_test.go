package kube

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/policy"
)

// TestCiliumCRDs: with Cilium 1.18.5's own CRDs installed (from the
// cilium/cilium module the project requires) instead of ward's, the
// policies are read and enforced alike, and the status keeps the Valid
// condition (Cilium's schema has no status.nodes: the API server refuses
// an apply with it, and the writer falls back to the condition alone).
func TestCiliumCRDs(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cilium/cilium").Output()
	if err != nil {
		t.Fatalf("locate the cilium/cilium module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "pkg/k8s/apis/cilium.io/client/crds/v2")
	// A cluster of its own: the shared one has ward's CRDs under the
	// same names.
	c := kubetest.Start(t)
	for _, f := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		c.ApplyFile(t, filepath.Join(dir, f))
	}
	const ns = "cilium-crds"
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	_, dc := c.Clients(t)
	cl, err := NewForConfig(c.Config(), Config{}.WithDefaults("node-c"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	repo := policy.NewRepository(policy.Config{})
	pols := cl.WatchPolicies(repo, func() {})
	sw := cl.NewStatusWriter(pols, func() (map[policy.Key]int, uint64) { return nil, 1 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cl.Run(ctx) }()
	go func() { _ = pols.Run(ctx) }()
	go func() { _ = sw.Run(ctx) }()
	<-cl.Synced()
	if st := cl.Status(); len(st.NotServed) != 0 {
		t.Fatalf("not served with Cilium's CRDs: %v", st.NotServed)
	}

	// Cilium's schema has an entity enum: the invalid policy here is one
	// only ward's parser refuses (a path that is no regular expression).
	badRegex := `{endpointSelector: {matchLabels: {org: empire}}, ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "/v1/(["}]}}]}]}`
	c.ApplyYAML(t, cnp(ns, "good", specL3)+"---\n"+cnp(ns, "bad", badRegex))
	cond := func(name string) (string, map[string]any, error) {
		o, err := dc.Resource(CNPResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", nil, err
		}
		st, _, _ := unstructured.NestedMap(o.Object, "status")
		conds, _ := st["conditions"].([]any)
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "Valid" {
				return fmt.Sprint(m["status"]), st, nil
			}
		}
		return "", st, nil
	}
	converge(t, "Valid conditions with Cilium's schema", func() error {
		g, gst, err := cond("good")
		if err != nil {
			return err
		}
		b, bst, err := cond("bad")
		if err != nil {
			return err
		}
		if g != "True" || b != "False" {
			return fmt.Errorf("good %q, bad %q %v", g, b, bst)
		}
		if _, ok := gst["nodes"]; ok {
			return fmt.Errorf("status.nodes kept by Cilium's schema? %v", gst)
		}
		return nil
	})
	found := false
	for _, p := range repo.Policies() {
		found = found || p.Metadata.Name == "good"
	}
	if !found {
		t.Error("the valid policy is not in the repository")
	}
}
