package kube

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy"
)

// InstallCRDs applies ward's policy CRDs (deploy/helm/ward/crds).
func installCRDs(t *testing.T, c *kubetest.Cluster) {
	t.Helper()
	for _, f := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		c.ApplyFile(t, filepath.Join(testenv.Root(t), "deploy/helm/ward/crds", f))
	}
}

// converge polls cond until it holds, failing the test after a minute
// (a convergence bound, not a timing assertion).
func converge(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cnp(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: %s, namespace: %s}\nspec: %s\n", name, ns, spec)
}

const (
	specL3 = `{endpointSelector: {matchLabels: {org: empire, class: deathstar}}, ingress: [{fromEndpoints: [{matchLabels: {org: empire}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]}`
	// Valid for the schema, refused by ward: an unknown entity.
	specBadEntity = `{endpointSelector: {matchLabels: {org: empire}}, ingress: [{fromEntities: [galaxy]}]}`
)

// TestPoliciesAndStatus drives the policy source and the status writer
// against the real API server: objects reach the repository with their
// origin, an invalid edit keeps the last good rules enforced and is
// reported (status condition with the field path, this node's entry, an
// Event), a fix and a delete follow, a clusterwide policy works alike.
func TestPoliciesAndStatus(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c)
	const ns = "kube-policies"
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	cs, dc := c.Clients(t)

	cfg := Config{HealthInterval: "200ms"}.WithDefaults("node-a")
	cl, err := NewForConfig(c.Config(), cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	repo := policy.NewRepository(policy.Config{})
	pols := cl.WatchPolicies(repo, func() {})
	sw := cl.NewStatusWriter(pols, func() (map[policy.Key]int, uint64) {
		return map[policy.Key]int{{Kind: policy.KindCNP, Namespace: ns, Name: "rule1"}: 3}, 7
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cl.Run(ctx) }()
	go func() { _ = pols.Run(ctx) }()
	go func() { _ = sw.Run(ctx) }()
	<-cl.Synced()

	key := policy.Key{Kind: policy.KindCNP, Namespace: ns, Name: "rule1"}
	inRepo := func(k policy.Key) *policy.Policy {
		for _, p := range repo.Policies() {
			if p.Key() == k {
				return p
			}
		}
		return nil
	}
	status := func(gvrCCNP bool, ns, name string) (map[string]any, error) {
		r := dc.Resource(CNPResource).Namespace(ns)
		if gvrCCNP {
			r = dc.Resource(CCNPResource)
		}
		o, err := r.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		st, _, _ := unstructured.NestedMap(o.Object, "status")
		return st, nil
	}
	valid := func(st map[string]any) (string, string) {
		conds, _ := st["conditions"].([]any)
		for _, c := range conds {
			m := c.(map[string]any)
			if m["type"] == "Valid" {
				s, _ := m["status"].(string)
				msg, _ := m["message"].(string)
				return s, msg
			}
		}
		return "", ""
	}

	c.ApplyYAML(t, cnp(ns, "rule1", specL3))
	converge(t, "rule1 in the repository", func() error {
		p := inRepo(key)
		if p == nil {
			return fmt.Errorf("not there")
		}
		if p.File != "k8s:CiliumNetworkPolicy/"+ns+"/rule1" {
			return fmt.Errorf("origin %q", p.File)
		}
		return nil
	})
	converge(t, "rule1 status valid", func() error {
		st, err := status(false, ns, "rule1")
		if err != nil {
			return err
		}
		if s, _ := valid(st); s != "True" {
			return fmt.Errorf("status %v", st)
		}
		node, _, _ := unstructured.NestedMap(st, "nodes", "node-a")
		if node["ok"] != true || node["enforcing"] != true || fmt.Sprint(node["enforcingEndpoints"]) != "3" || fmt.Sprint(node["localPolicyRevision"]) != "7" {
			return fmt.Errorf("node status %v", node)
		}
		return nil
	})

	// An invalid edit: reported, and the last good rules stay.
	c.ApplyYAML(t, cnp(ns, "rule1", specBadEntity))
	converge(t, "rule1 invalid in status", func() error {
		st, err := status(false, ns, "rule1")
		if err != nil {
			return err
		}
		s, msg := valid(st)
		if s != "False" || !strings.Contains(msg, "spec.ingress[0].fromEntities[0]") {
			return fmt.Errorf("condition %s %q", s, msg)
		}
		node, _, _ := unstructured.NestedMap(st, "nodes", "node-a")
		if node["ok"] != false || !strings.Contains(fmt.Sprint(node["error"]), "fromEntities") {
			return fmt.Errorf("node status %v", node)
		}
		return nil
	})
	if p := inRepo(key); p == nil || len(p.Spec.Ingress) != 1 || len(p.Spec.Ingress[0].FromEndpoints) != 1 {
		t.Fatalf("the last good version of rule1 is not enforced: %+v", p)
	}
	converge(t, "PolicyInvalid event", func() error {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=rule1"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == ReasonInvalid && e.Type == "Warning" && strings.Contains(e.Message, "fromEntities") && e.InvolvedObject.Kind == policy.KindCNP {
				return nil
			}
		}
		return fmt.Errorf("no event among %d", len(evs.Items))
	})

	// Fixed: valid again, with the new rules.
	c.ApplyYAML(t, cnp(ns, "rule1", strings.Replace(specBadEntity, "galaxy", "world", 1)))
	converge(t, "rule1 fixed", func() error {
		p := inRepo(key)
		if p == nil || len(p.Spec.Ingress) != 1 || len(p.Spec.Ingress[0].FromEntities) != 1 {
			return fmt.Errorf("repository %+v", p)
		}
		st, err := status(false, ns, "rule1")
		if err != nil {
			return err
		}
		if s, _ := valid(st); s != "True" {
			return fmt.Errorf("status %v", st)
		}
		return nil
	})

	// Clusterwide.
	c.ApplyYAML(t, "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: kube-policies-cw}\nspec: "+specL3+"\n")
	ckey := policy.Key{Kind: policy.KindCCNP, Name: "kube-policies-cw"}
	converge(t, "ccnp in the repository and valid", func() error {
		if inRepo(ckey) == nil {
			return fmt.Errorf("not in the repository")
		}
		st, err := status(true, "", "kube-policies-cw")
		if err != nil {
			return err
		}
		if s, _ := valid(st); s != "True" {
			return fmt.Errorf("status %v", st)
		}
		return nil
	})

	// Deleted: gone from the repository.
	if err := dc.Resource(CNPResource).Namespace(ns).Delete(ctx, "rule1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := dc.Resource(CCNPResource).Delete(ctx, "kube-policies-cw", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	converge(t, "deleted policies leave the repository", func() error {
		if inRepo(key) != nil || inRepo(ckey) != nil {
			return fmt.Errorf("still there")
		}
		return nil
	})

	st := cl.Status()
	if !st.Connected || !st.Synced {
		t.Errorf("client status %+v", st)
	}
	if _, ok := st.Resources["ciliumnetworkpolicies"]; !ok {
		t.Errorf("resources %v", st.Resources)
	}
}

// TestInvalidNewPolicyEnforcesNothing: an object that was never valid
// puts nothing into the repository; one colliding with a policy of the
// directory is refused.
func TestInvalidNewPolicyEnforcesNothing(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c)
	const ns = "kube-policies-new"
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	cl, err := NewForConfig(c.Config(), Config{}.WithDefaults("node-b"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	repo := policy.NewRepository(policy.Config{})
	dir, err := policy.ParseOne("dir.yaml", []byte(cnp(ns, "from-dir", specL3)))
	if err != nil {
		t.Fatal(err)
	}
	repo.Upsert(dir)
	pols := cl.WatchPolicies(repo, func() {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cl.Run(ctx) }()
	go func() { _ = pols.Run(ctx) }()
	<-cl.Synced()
	c.ApplyYAML(t, cnp(ns, "bad", specBadEntity)+"---\n"+cnp(ns, "from-dir", specL3))
	converge(t, "both reported", func() error {
		n := 0
		for _, st := range pols.States() {
			if st.Err != nil && !st.Enforced {
				n++
			}
			if st.Key.Name == "from-dir" && (st.Err == nil || !strings.Contains(st.Err.Error(), "already defined by the policy directory")) {
				return fmt.Errorf("from-dir: %v", st.Err)
			}
		}
		if n != 2 {
			return fmt.Errorf("%d of 2 reported: %+v", n, pols.States())
		}
		return nil
	})
	for _, p := range repo.Policies() {
		if p.Key().Name == "bad" {
			t.Errorf("invalid new policy in the repository")
		}
		if p.Key().Name == "from-dir" && p.File != "dir.yaml" {
			t.Errorf("the directory's policy was replaced by the object: %q", p.File)
		}
	}
}

// countingSink counts the repository writes per policy name.
type countingSink struct {
	*policy.Repository
	mu               sync.Mutex
	upserts, deletes map[string]int
}

func (s *countingSink) Upsert(p *policy.Policy) {
	s.mu.Lock()
	s.upserts[p.Metadata.Name]++
	s.mu.Unlock()
	s.Repository.Upsert(p)
}

func (s *countingSink) Delete(k policy.Key) bool {
	s.mu.Lock()
	s.deletes[k.Name]++
	s.mu.Unlock()
	return s.Repository.Delete(k)
}

func (s *countingSink) counts(name string) (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upserts[name], s.deletes[name]
}

// TestRelistWithoutGap: an API-server restart makes the informers list
// again; the policies already held are neither deleted nor re-applied
// (no moment without them), the client reports the outage, and changes
// made after it arrive.
func TestRelistWithoutGap(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c)
	const ns = "kube-policies-relist"
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	c.ApplyYAML(t, cnp(ns, "kept", specL3))
	cl, err := NewForConfig(c.Config(), Config{HealthInterval: "100ms"}.WithDefaults("node-r"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	sink := &countingSink{Repository: policy.NewRepository(policy.Config{}), upserts: map[string]int{}, deletes: map[string]int{}}
	pols := cl.WatchPolicies(sink, func() {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cl.Run(ctx) }()
	go func() { _ = pols.Run(ctx) }()
	<-cl.Synced()
	converge(t, "kept applied", func() error {
		if u, _ := sink.counts("kept"); u != 1 {
			return fmt.Errorf("%d upserts", u)
		}
		return nil
	})

	c.StopAPIServer()
	converge(t, "the outage seen", func() error {
		if st := cl.Status(); st.Connected || st.DownSince.IsZero() {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if err := c.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	// A policy created after the restart arrives once the informer has
	// listed and watches again.
	c.ApplyYAML(t, cnp(ns, "after", specL3))
	converge(t, "the policy made after the restart applied", func() error {
		if u, _ := sink.counts("after"); u != 1 {
			return fmt.Errorf("%d upserts", u)
		}
		if !cl.Status().Connected {
			return fmt.Errorf("not connected")
		}
		return nil
	})
	if u, d := sink.counts("kept"); u != 1 || d != 0 {
		t.Errorf("kept: %d upserts, %d deletes across the relist; want 1, 0", u, d)
	}
}

// TestOneEventPerInvalidVersion: a second node finding the invalid
// version already reported in the condition records no second Event.
func TestOneEventPerInvalidVersion(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c)
	const ns = "kube-policies-events"
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	cs, dc := c.Clients(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startNode := func(name string) *Policies {
		cl, err := NewForConfig(c.Config(), Config{}.WithDefaults(name), slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		pols := cl.WatchPolicies(policy.NewRepository(policy.Config{}), func() {})
		sw := cl.NewStatusWriter(pols, func() (map[policy.Key]int, uint64) { return nil, 1 })
		go func() { _ = cl.Run(ctx) }()
		go func() { _ = pols.Run(ctx) }()
		go func() { _ = sw.Run(ctx) }()
		<-cl.Synced()
		return pols
	}
	c.ApplyYAML(t, cnp(ns, "bad", specBadEntity))
	startNode("node-x")
	nodeWrote := func(node string) func() error {
		return func() error {
			o, err := dc.Resource(CNPResource).Namespace(ns).Get(ctx, "bad", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if _, ok, _ := unstructured.NestedMap(o.Object, "status", "nodes", node); !ok {
				return fmt.Errorf("no status from %s: %v", node, o.Object["status"])
			}
			return nil
		}
	}
	converge(t, "node-x's status", nodeWrote("node-x"))
	startNode("node-y")
	converge(t, "node-y's status", nodeWrote("node-y"))
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=bad"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) != 1 || evs.Items[0].Source.Host != "node-x" {
		var hosts []string
		for _, e := range evs.Items {
			hosts = append(hosts, e.Source.Host)
		}
		t.Errorf("%d events (from %v), want 1 from node-x", len(evs.Items), hosts)
	}
}

// TestRestartedNodeDoesNotRewrite: a node restarted over policies whose
// status it wrote before does not write them again (at a thousand
// policies a restart would rewrite a thousand statuses per node).
func TestRestartedNodeDoesNotRewrite(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c)
	const ns = "kube-policies-restart"
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	_, dc := c.Clients(t)
	run := func(ctx context.Context) {
		cl, err := NewForConfig(c.Config(), Config{}.WithDefaults("node-z"), slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		pols := cl.WatchPolicies(policy.NewRepository(policy.Config{}), func() {})
		sw := cl.NewStatusWriter(pols, func() (map[policy.Key]int, uint64) { return nil, 1 })
		go func() { _ = cl.Run(ctx) }()
		go func() { _ = pols.Run(ctx) }()
		go func() { _ = sw.Run(ctx) }()
		<-cl.Synced()
	}
	written := func(name string) func() error {
		return func() error {
			o, err := dc.Resource(CNPResource).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if _, ok, _ := unstructured.NestedMap(o.Object, "status", "nodes", "node-z"); !ok {
				return fmt.Errorf("no status yet")
			}
			return nil
		}
	}
	rv := func(name string) string {
		o, err := dc.Resource(CNPResource).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return o.GetResourceVersion()
	}
	c.ApplyYAML(t, cnp(ns, "good", specL3)+"---\n"+cnp(ns, "bad", specBadEntity))
	ctx1, stop1 := context.WithCancel(context.Background())
	run(ctx1)
	converge(t, "good's status", written("good"))
	converge(t, "bad's status", written("bad"))
	stop1()
	before := map[string]string{"good": rv("good"), "bad": rv("bad")}

	ctx2, stop2 := context.WithCancel(context.Background())
	defer stop2()
	run(ctx2)
	// A policy made now is written by the restarted node; its round
	// considered the older ones too.
	c.ApplyYAML(t, cnp(ns, "later", specL3))
	converge(t, "later's status", written("later"))
	for name, was := range before {
		if now := rv(name); now != was {
			t.Errorf("%s rewritten by the restarted node (resourceVersion %s -> %s)", name, was, now)
		}
	}
}
