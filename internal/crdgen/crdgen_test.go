package main

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.StopShared()
	os.Exit(code)
}

const crdDir = "deploy/helm/ward/crds"

// TestCommittedFresh: the committed CRDs are what the generator makes of
// the current policy types.
func TestCommittedFresh(t *testing.T) {
	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(testenv.Root(t), crdDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s/%s is stale: run go generate ./internal/crdgen", crdDir, name)
		}
	}
}

// TestSchemaFollowsTypes: every JSON field of the policy types is in the
// schema (a field added to ward's types reaches the CRD), and the enums
// and required fields are where Cilium has them.
func TestSchemaFollowsTypes(t *testing.T) {
	s := schemaOf(reflectRule())
	ingress := s["properties"].(obj)["ingress"].(obj)["items"].(obj)["properties"].(obj)
	sel := ingress["fromEndpoints"].(obj)["items"].(obj)
	req := sel["properties"].(obj)["matchExpressions"].(obj)["items"].(obj)
	if got := req["properties"].(obj)["operator"].(obj)["enum"]; len(got.([]any)) != 4 {
		t.Errorf("operator enum %v", got)
	}
	if got := req["required"]; len(got.([]any)) != 2 {
		t.Errorf("matchExpressions required %v, want key and operator", got)
	}
	port := ingress["toPorts"].(obj)["items"].(obj)["properties"].(obj)["ports"].(obj)["items"].(obj)["properties"].(obj)["port"].(obj)
	if port["x-kubernetes-int-or-string"] != true {
		t.Errorf("port schema %v, want int-or-string", port)
	}
	for _, f := range []string{"fromEndpoints", "fromRequires", "fromCIDR", "fromCIDRSet", "fromEntities", "fromNodes", "fromGroups", "toPorts", "icmps", "authentication"} {
		if _, ok := ingress[f]; !ok {
			t.Errorf("ingress schema lacks %s", f)
		}
	}
}

// TestCRDsOnAPIServer: the CRDs install on the real API server; every
// policy of the seed's examples (examples/) is created as an object, and
// every one of Cilium 1.18.5's example policies passes a server-side dry
// run (the schema accepts them); malformed objects are refused by the API
// server with the field named.
func TestCRDsOnAPIServer(t *testing.T) {
	c := kubetest.Shared(t)
	root := testenv.Root(t)
	for _, name := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		c.ApplyFile(t, filepath.Join(root, crdDir, name))
	}
	ctx := context.Background()
	_, dc := c.Clients(t)
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: crdgen-examples}\n")

	apply := func(dir string, dryRun bool, skip map[string]bool) int {
		n := 0
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
				return err
			}
			rel, _ := filepath.Rel(dir, path)
			if skip[filepath.ToSlash(rel)] {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			objs, err := kubetest.Decode(data)
			if err != nil {
				t.Errorf("%s: %v", rel, err)
				return nil
			}
			var docs [][]byte
			for _, o := range objs {
				if o.GetKind() != policy.KindCNP && o.GetKind() != policy.KindCCNP {
					continue
				}
				if ns := o.GetNamespace(); ns != "" {
					// The namespaces the examples name exist in their clusters.
					c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
				}
				b, _ := o.MarshalJSON()
				docs = append(docs, b)
			}
			for _, b := range docs {
				_, err := c.Apply(ctx, b, kubetest.ApplyOptions{DryRun: dryRun, Namespace: "crdgen-examples"})
				// What ward accepts, the API server accepts; what ward
				// refuses (the seed's deliberate mistakes) it may refuse.
				if _, perr := policy.Parse(rel, b); perr != nil {
					t.Logf("%s: ward refuses it (%v); the API server: %v", rel, perr, err)
					continue
				}
				if err != nil {
					t.Errorf("%s: ward accepts it, the API server refuses it: %v", rel, err)
				}
				n++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := apply(filepath.Join(root, "examples"), false, nil); n < 20 {
		t.Errorf("created %d policies of examples/, want them all (>= 20)", n)
	}
	list, err := dc.Resource(cnpGVR).Namespace("crdgen-examples").List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) == 0 {
		t.Fatalf("list cnp: %v (%d)", err, len(list.Items))
	}
	// Cilium refuses this one too (an unknown field "auth").
	if n := apply(filepath.Join(root, "policy/testdata/cilium-1.18.5"), true, map[string]bool{"policies/auth/auth.yaml": true}); n < 80 {
		t.Errorf("dry-ran %d policies of Cilium's examples, want them all (>= 80)", n)
	}

	for _, tc := range []struct{ name, spec, want string }{
		{"operator-lower-case", `{endpointSelector: {matchExpressions: [{key: app, operator: in, values: [a]}]}}`, "operator"},
		{"port-object", `{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: {a: 1}}]}]}]}`, "port"},
		{"protocol", `{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: "80", protocol: HTTP}]}]}]}`, "protocol"},
		{"missing-key", `{endpointSelector: {matchExpressions: [{operator: Exists}]}}`, "key"},
	} {
		doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: " + tc.name + ", namespace: crdgen-examples}\nspec: " + tc.spec + "\n"
		if _, err := c.Apply(ctx, []byte(doc), kubetest.ApplyOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want a refusal naming %q", tc.name, err, tc.want)
		}
	}

	// The status subresource and the printer column.
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: ccnp-status}\nspec: {endpointSelector: {}}\n"), &u.Object); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Resource(ccnpGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := []byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"ccnp-status"},"status":{"conditions":[{"type":"Valid","status":"True"}],"nodes":{"n1":{"ok":true,"enforcingEndpoints":2}}}}`)
	got, err := dc.Resource(ccnpGVR).Patch(ctx, "ccnp-status", "application/apply-patch+yaml", st, metav1.PatchOptions{FieldManager: "t", Force: ptr(true)}, "status")
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if n, _, _ := unstructured.NestedInt64(got.Object, "status", "nodes", "n1", "enforcingEndpoints"); n != 2 {
		t.Errorf("status not kept: %v", got.Object["status"])
	}
}

var (
	cnpGVR  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	ccnpGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

func reflectRule() reflect.Type { return reflect.TypeFor[policy.Rule]() }

func ptr[T any](v T) *T { return &v }
