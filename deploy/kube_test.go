package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	authzv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/wardproxy/ward/internal/kubetest"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(capChildEnv); dir != "" {
		os.Exit(capChild(dir))
	}
	var err error
	if binDir, err = os.MkdirTemp("", "ward-deploy-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	kubetest.StopShared()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// manifest decodes a committed rendering.
func manifest(t *testing.T, file string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("manifests", file))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := kubetest.Decode(b)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return objs
}

// applyObjects server-side applies objs for real, as the admin.
func applyObjects(t *testing.T, c *kubetest.Cluster, objs ...*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		b, err := o.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Apply(context.Background(), b, kubetest.ApplyOptions{FieldManager: "ward-deploy-test"}); err != nil {
			t.Fatalf("apply %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
}

func namespace(name string) *unstructured.Unstructured {
	o := &unstructured.Unstructured{}
	o.SetAPIVersion("v1")
	o.SetKind("Namespace")
	o.SetName(name)
	return o
}

// dryRunner applies objects with server-side dry-run and strict field
// validation: the apiserver decodes, defaults, validates and admits each
// object as if it were stored, and an unknown or duplicated field is an
// error (not a warning, the default).
type dryRunner struct {
	dc     dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newDryRunner(t *testing.T, cfg *rest.Config) *dryRunner {
	t.Helper()
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &dryRunner{dc: dc, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}
}

func (d *dryRunner) apply(ctx context.Context, o *unstructured.Unstructured) error {
	gvk := o.GroupVersionKind()
	m, err := d.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("mapping: %w", err)
	}
	var ri dynamic.ResourceInterface = d.dc.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if o.GetNamespace() == "" {
			return fmt.Errorf("namespaced object without a namespace")
		}
		ri = d.dc.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	body, err := o.MarshalJSON()
	if err != nil {
		return err
	}
	force := true
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
		FieldManager: "ward-deploy-test", Force: &force, DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict",
	})
	return err
}

// TestManifestsDryRun: the CRDs (helm/ward/crds) installed, every object
// of every committed rendering (default values, custom values, cleanup
// mode) passes the real kube-apiserver's server-side dry-run with strict
// field validation. The namespaces they live in exist first (the release
// namespace and an existing secrets namespace are the user's; the chart's
// own secrets namespace is applied for real). A DaemonSet with a
// misspelled field is refused the same way, so the check is not vacuous.
func TestManifestsDryRun(t *testing.T) {
	c := kubetest.Shared(t)
	ctx := context.Background()
	crds, _ := filepath.Glob("helm/ward/crds/*.yaml")
	for _, f := range crds {
		c.ApplyFile(t, f)
	}
	applyObjects(t, c, namespace("ward"), namespace("tls-secrets"))
	dr := newDryRunner(t, c.Config())
	for _, r := range renderings {
		t.Run(r.file, func(t *testing.T) {
			objs := manifest(t, r.file)
			if len(objs) == 0 {
				t.Fatal("no objects")
			}
			for _, o := range objs {
				if o.GetKind() == "Namespace" {
					applyObjects(t, c, o)
				}
			}
			for _, o := range objs {
				if err := dr.apply(ctx, o); err != nil {
					t.Errorf("%s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
			}
		})
	}
	t.Run("misspelled field refused", func(t *testing.T) {
		for _, o := range manifest(t, "ward.yaml") {
			if o.GetKind() != "DaemonSet" {
				continue
			}
			bad := o.DeepCopy()
			if err := unstructured.SetNestedField(bad.Object, int64(1), "spec", "template", "spec", "hostNetwrok"); err != nil {
				t.Fatal(err)
			}
			if err := dr.apply(ctx, bad); err == nil || !strings.Contains(err.Error(), "hostNetwrok") {
				t.Errorf("dry-run of a DaemonSet with spec.template.spec.hostNetwrok: %v; want a strict-validation error naming the field", err)
			}
			return
		}
		t.Fatal("no DaemonSet in ward.yaml")
	})
}

// perm is one permission: verb on group/resource[/subresource], in
// Namespace ("" for every namespace, as a ClusterRoleBinding grants).
type perm struct {
	Namespace, Group, Resource, Verb string
}

func (p perm) String() string {
	ns := p.Namespace
	if ns == "" {
		ns = "every namespace"
	}
	return p.what() + " in " + ns
}

// what is the permission without its namespace: "get core/pods".
func (p perm) what() string {
	g := p.Group
	if g == "" {
		g = "core"
	}
	return fmt.Sprintf("%s %s/%s", p.Verb, g, p.Resource)
}

func perms(ns, group string, resources, verbs []string) []perm {
	var out []perm
	for _, r := range resources {
		for _, v := range verbs {
			out = append(out, perm{Namespace: ns, Group: group, Resource: r, Verb: v})
		}
	}
	return out
}

var read = []string{"get", "list", "watch"}

// wardPermissions is everything wardd's ServiceAccount may do, and
// nothing else: change it together with templates/rbac.yaml, saying why.
func wardPermissions(secretsNS string) []perm {
	return slices.Concat(
		perms("", "cilium.io", []string{"ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"}, read),
		perms("", "cilium.io", []string{"ciliumnetworkpolicies/status", "ciliumclusterwidenetworkpolicies/status"}, []string{"patch", "update"}),
		perms("", "", []string{"pods", "namespaces", "services", "nodes"}, read),
		perms("", "discovery.k8s.io", []string{"endpointslices"}, read),
		perms("", "", []string{"events"}, []string{"create"}),
		perms(secretsNS, "", []string{"secrets"}, read),
	)
}

// sensitive are resources checked besides the table's: what would make
// wardd's or an operator's account root on a node or a reader of every
// Secret.
var sensitive = []perm{
	{Resource: "pods/exec"}, {Resource: "pods/attach"}, {Resource: "pods/portforward"},
	{Resource: "pods/ephemeralcontainers"}, {Resource: "pods/status"}, {Resource: "pods/log"},
	{Resource: "pods/eviction"}, {Resource: "nodes/proxy"}, {Resource: "nodes/status"},
	{Resource: "secrets"}, {Resource: "configmaps"}, {Resource: "serviceaccounts/token"},
	{Resource: "endpoints"}, {Resource: "namespaces/status"}, {Resource: "services/proxy"},
	{Group: "apps", Resource: "daemonsets"}, {Group: "events.k8s.io", Resource: "events"},
	{Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
	{Group: "rbac.authorization.k8s.io", Resource: "rolebindings"},
	{Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"},
	{Group: "certificates.k8s.io", Resource: "certificatesigningrequests"},
}

var allVerbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}

// granted expands the rules of the roles bound to subject (a
// ServiceAccount namespace/name or a User) in objs into permissions; it
// fails on what cannot be expanded into a finite table (wildcards,
// resourceNames, non-resource URLs), which a least-privilege role never
// needs.
func granted(t *testing.T, objs []*unstructured.Unstructured, subject rbacv1.Subject) []perm {
	t.Helper()
	roles := map[string][]rbacv1.PolicyRule{} // "ClusterRole/name" or "Role/ns/name"
	var out []perm
	type binding struct {
		ns   string
		ref  rbacv1.RoleRef
		subs []rbacv1.Subject
	}
	var bindings []binding
	for _, o := range objs {
		switch o.GetKind() {
		case "ClusterRole", "Role":
			var r rbacv1.Role
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &r); err != nil {
				t.Fatal(err)
			}
			key := "ClusterRole/" + o.GetName()
			if o.GetKind() == "Role" {
				key = "Role/" + o.GetNamespace() + "/" + o.GetName()
			}
			roles[key] = r.Rules
		case "ClusterRoleBinding", "RoleBinding":
			var b rbacv1.RoleBinding
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &b); err != nil {
				t.Fatal(err)
			}
			bindings = append(bindings, binding{ns: o.GetNamespace(), ref: b.RoleRef, subs: b.Subjects})
		}
	}
	for _, b := range bindings {
		if !slices.ContainsFunc(b.subs, func(s rbacv1.Subject) bool {
			return s.Kind == subject.Kind && s.Name == subject.Name && s.Namespace == subject.Namespace
		}) {
			continue
		}
		key := "ClusterRole/" + b.ref.Name
		if b.ref.Kind == "Role" {
			key = "Role/" + b.ns + "/" + b.ref.Name
		}
		rules, ok := roles[key]
		if !ok {
			t.Fatalf("binding to %s: no such role in the manifests", key)
		}
		for _, r := range rules {
			if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
				t.Errorf("%s: rule %+v: resourceNames / nonResourceURLs are not in the expected table", key, r)
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						if g == "*" || res == "*" || v == "*" || strings.HasSuffix(res, "/*") {
							t.Errorf("%s: rule %+v has a wildcard", key, r)
						}
						out = append(out, perm{Namespace: b.ns, Group: g, Resource: res, Verb: v})
					}
				}
			}
		}
	}
	return out
}

func sortPerms(ps []perm) []perm {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b perm) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(ps)
}

// allows asks the apiserver whether user (with groups) may do p in ns, by
// a SubjectAccessReview.
func allows(t *testing.T, cs kubernetes.Interface, user string, groups []string, ns string, p perm) bool {
	t.Helper()
	res, sub, _ := strings.Cut(p.Resource, "/")
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: user, Groups: groups,
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: ns, Verb: p.Verb, Group: p.Group, Resource: res, Subresource: sub},
	}}
	got, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview %s in %q for %s: %v", p.what(), ns, user, err)
	}
	return got.Status.Allowed
}

// wardd's ServiceAccount as the apiserver authenticates it.
var (
	wardUser   = "system:serviceaccount:ward:ward"
	wardGroups = []string{"system:serviceaccounts", "system:serviceaccounts:ward", "system:authenticated"}
)

// waitWardRBAC waits until the chart's bindings for wardd are in force:
// the apiserver's authorizer sees new bindings through its informers.
func waitWardRBAC(t *testing.T, cs kubernetes.Interface, secretsNS string) {
	t.Helper()
	eventually(t, "the ClusterRoleBinding in force", func() bool {
		return allows(t, cs, wardUser, wardGroups, "default", perm{Resource: "pods", Verb: "get"})
	})
	eventually(t, "the secrets RoleBinding in force", func() bool {
		return allows(t, cs, wardUser, wardGroups, secretsNS, perm{Resource: "secrets", Verb: "get"})
	})
}

// TestRBACLeastPrivilege applies the chart's RBAC for real and holds
// wardd's ServiceAccount to the table wardPermissions, both ways:
//   - the rules the manifests bind to it, expanded, are exactly the table
//     (a rule added to templates/rbac.yaml without the table fails here);
//   - SubjectAccessReviews over every verb, on the table's resources and
//     on sensitive ones, in a workload namespace, ward's, the secrets
//     namespace and cluster-wide, answer allowed exactly for the table:
//     no pods/exec, no secrets outside the secrets namespace, no writes to
//     pods, no nodes/proxy.
//
// The operator role (Restricting privileged pod access) bound to a user
// in ward's namespace reads ward's pods and logs and is refused exec,
// attach, port-forward, ephemeral containers and nodes/proxy, and no role
// of any rendering names those subresources.
func TestRBACLeastPrivilege(t *testing.T) {
	c := kubetest.Shared(t)
	cs, _ := c.Clients(t)
	const releaseNS = "ward"
	objs := manifest(t, "ward.yaml")
	var secretsNS string
	applyObjects(t, c, namespace(releaseNS))
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			applyObjects(t, c, o)
		}
		if o.GetKind() == "Role" && o.GetName() == "ward-secrets" {
			secretsNS = o.GetNamespace()
		}
	}
	if secretsNS == "" || secretsNS == releaseNS {
		t.Fatalf("secrets namespace %q; want a namespace of its own", secretsNS)
	}
	want := sortPerms(wardPermissions(secretsNS))
	sa := rbacv1.Subject{Kind: "ServiceAccount", Namespace: releaseNS, Name: "ward"}
	if d := cmp.Diff(want, sortPerms(granted(t, objs, sa))); d != "" {
		t.Errorf("permissions the chart grants wardd (-table +chart):\n%s", d)
	}

	user, groups := wardUser, wardGroups
	waitWardRBAC(t, cs, secretsNS)
	universe := map[perm]bool{}
	for _, p := range slices.Concat(want, sensitive) {
		for _, v := range allVerbs {
			universe[perm{Group: p.Group, Resource: p.Resource, Verb: v}] = true
		}
	}
	expected := func(ns string, p perm) bool {
		return slices.ContainsFunc(want, func(w perm) bool {
			return w.Group == p.Group && w.Resource == p.Resource && w.Verb == p.Verb && (w.Namespace == "" || w.Namespace == ns)
		})
	}
	checked := 0
	for _, ns := range []string{"default", releaseNS, secretsNS, ""} {
		for p := range universe {
			if got, exp := allows(t, cs, user, groups, ns, p), expected(ns, p); got != exp {
				t.Errorf("wardd may %s in namespace %q: %v; want %v", p.what(), ns, got, exp)
			}
			checked++
		}
	}
	t.Logf("%d SubjectAccessReviews for wardd's ServiceAccount", checked)
	for _, d := range []struct {
		ns string
		p  perm
	}{
		{ns: releaseNS, p: perm{Resource: "pods/exec", Verb: "create"}},
		{ns: "default", p: perm{Resource: "secrets", Verb: "get"}},
		{ns: releaseNS, p: perm{Resource: "secrets", Verb: "list"}},
		{ns: "default", p: perm{Resource: "pods", Verb: "create"}},
		{ns: "default", p: perm{Resource: "pods", Verb: "patch"}},
		{ns: "default", p: perm{Resource: "pods", Verb: "delete"}},
		{ns: "default", p: perm{Resource: "pods/status", Verb: "update"}},
		{p: perm{Resource: "nodes/proxy", Verb: "get"}},
		{p: perm{Resource: "nodes/proxy", Verb: "create"}},
	} {
		if allows(t, cs, user, groups, d.ns, d.p) {
			t.Errorf("wardd may %s in namespace %q; want denied", d.p.what(), d.ns)
		}
	}

	// The operator role, bound in ward's namespace.
	applyObjects(t, c, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
		"metadata": map[string]any{"name": "ward-operators", "namespace": releaseNS},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ward-operator"},
		"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}},
	}})
	alice := []string{"system:authenticated"}
	eventually(t, "the operators' RoleBinding in force", func() bool {
		return allows(t, cs, "alice", alice, releaseNS, perm{Resource: "pods", Verb: "get"})
	})
	for _, p := range []perm{{Resource: "pods", Verb: "list"}, {Resource: "pods/log", Verb: "get"}, {Group: "apps", Resource: "daemonsets", Verb: "get"}} {
		if !allows(t, cs, "alice", alice, releaseNS, p) {
			t.Errorf("operator may not %s in namespace %s; want allowed", p.what(), releaseNS)
		}
	}
	for _, d := range []struct {
		ns string
		p  perm
	}{
		{ns: releaseNS, p: perm{Resource: "pods/exec", Verb: "create"}},
		{ns: releaseNS, p: perm{Resource: "pods/exec", Verb: "get"}},
		{ns: releaseNS, p: perm{Resource: "pods/attach", Verb: "create"}},
		{ns: releaseNS, p: perm{Resource: "pods/portforward", Verb: "create"}},
		{ns: releaseNS, p: perm{Resource: "pods/ephemeralcontainers", Verb: "patch"}},
		{ns: releaseNS, p: perm{Resource: "secrets", Verb: "get"}},
		{p: perm{Resource: "nodes/proxy", Verb: "get"}},
		{p: perm{Resource: "nodes/proxy", Verb: "create"}},
	} {
		if allows(t, cs, "alice", alice, d.ns, d.p) {
			t.Errorf("operator may %s in namespace %q; want denied", d.p.what(), d.ns)
		}
	}
	for _, r := range renderings {
		for _, o := range manifest(t, r.file) {
			if k := o.GetKind(); k != "Role" && k != "ClusterRole" {
				continue
			}
			b, _ := json.Marshal(o.Object["rules"])
			for _, s := range []string{"pods/exec", "pods/attach", "pods/portforward", "pods/ephemeralcontainers", "nodes/proxy", `"*"`} {
				if strings.Contains(string(b), s) {
					t.Errorf("%s: %s %s grants %s", r.file, o.GetKind(), o.GetName(), s)
				}
			}
		}
	}
}
