package kubetest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	authv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardproxy/ward/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// TestCluster: the shared cluster serves the admin, impersonation is
// authorized by RBAC, a kubeconfig works for kubectl, applied objects
// (and CRDs with their resources) exist, and an apiserver restart keeps
// what etcd stored.
func TestCluster(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()
	cs, _ := c.Clients(t)
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
		t.Fatalf("admin get kube-system: %v", err)
	}

	// RBAC: an impersonated user without bindings is forbidden.
	nobody, err := kubernetes.NewForConfig(c.ConfigFor("nobody", "system:authenticated"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nobody.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("nobody lists pods: err %v, want forbidden", err)
	}
	sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{
		User: "nobody", ResourceAttributes: &authv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: "default"},
	}}, metav1.CreateOptions{})
	if err != nil || sar.Status.Allowed {
		t.Fatalf("SubjectAccessReview for nobody: %v %+v", err, sar)
	}

	c.ApplyYAML(t, `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.kubetest.example}
spec:
  group: kubetest.example
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
---
apiVersion: kubetest.example/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: kubetest-cm}
data: {k: v}
`)
	// Schema validation: a string where the schema says integer is refused.
	if _, err := c.Apply(ctx, []byte("apiVersion: kubetest.example/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: big}\n"), ApplyOptions{}); err == nil || !strings.Contains(err.Error(), ".spec.size") {
		t.Fatalf("invalid widget: err %v, want a refusal naming .spec.size", err)
	}
	// Dry run: validated, not stored.
	if _, err := c.Apply(ctx, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dry}\n"), ApplyOptions{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry-run configmap: err %v, want not found", err)
	}

	kubectl := testenv.File(t, "build/bin/kubectl", "run `make setup`")
	out, err := exec.Command(kubectl, "--kubeconfig", c.Kubeconfig(), "get", "widgets", "-o", "name").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "widget.kubetest.example/w1" {
		t.Fatalf("kubectl get widgets: %v %q", err, out)
	}

	c.RestartAPIServer(t)
	cs, _ = c.Clients(t)
	if _, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "kubetest-cm", metav1.GetOptions{}); err != nil {
		t.Fatalf("configmap after restart: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), "kube-apiserver.log")); err != nil {
		t.Fatal(err)
	}
}
