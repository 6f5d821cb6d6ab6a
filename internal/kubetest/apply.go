package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

var getOpts = metav1.GetOptions{}

// ApplyOptions tunes Apply.
type ApplyOptions struct {
	// FieldManager of the server-side apply; default "kubetest".
	FieldManager string
	// DryRun asks the apiserver to validate and admit without storing
	// (server-side dry-run).
	DryRun bool
	// Namespace for namespaced objects that name none; default "default".
	Namespace string
}

// ApplyFile server-side applies every object of a YAML or JSON file (many
// documents, lists too) as the admin, failing the test on an error.
func (c *Cluster) ApplyFile(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	objs, err := c.Apply(context.Background(), b, ApplyOptions{})
	if err != nil {
		t.Fatalf("kubetest: apply %s: %v", path, err)
	}
	return objs
}

// ApplyYAML is ApplyFile for YAML in memory.
func (c *Cluster) ApplyYAML(t testing.TB, yamlDocs string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := c.Apply(context.Background(), []byte(yamlDocs), ApplyOptions{})
	if err != nil {
		t.Fatalf("kubetest: apply: %v", err)
	}
	return objs
}

// Apply server-side applies (force) every object of data, in order, and
// returns them as the apiserver answered. An applied
// CustomResourceDefinition is waited for until Established, so later
// documents may be its resources. The first error stops it (the objects
// applied so far stay), naming the document.
func (c *Cluster) Apply(ctx context.Context, data []byte, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	if opts.FieldManager == "" {
		opts.FieldManager = "kubetest"
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	objs, err := Decode(data)
	if err != nil {
		return nil, err
	}
	dc, err := dynamic.NewForConfig(c.Config())
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(c.Config())
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	cached := memory.NewMemCacheClient(disc)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	var out []*unstructured.Unstructured
	for i, o := range objs {
		what := fmt.Sprintf("document %d (%s %s)", i, o.GetKind(), o.GetName())
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil && meta.IsNoMatchError(err) {
			// A CRD applied by an earlier call or document: rediscover.
			cached.Invalidate()
			mapper.Reset()
			m, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return out, fmt.Errorf("%s: mapping: %w", what, err)
		}
		var ri dynamic.ResourceInterface = dc.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if o.GetNamespace() == "" {
				o.SetNamespace(opts.Namespace)
			}
			ri = dc.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		body, err := o.MarshalJSON()
		if err != nil {
			return out, fmt.Errorf("%s: %w", what, err)
		}
		po := metav1.PatchOptions{FieldManager: opts.FieldManager, Force: ptr(true)}
		if opts.DryRun {
			po.DryRun = []string{metav1.DryRunAll}
		}
		got, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, po)
		if err != nil {
			return out, fmt.Errorf("%s: apply: %w", what, err)
		}
		out = append(out, got)
		if gvk.Group == "apiextensions.k8s.io" && gvk.Kind == "CustomResourceDefinition" && !opts.DryRun {
			if err := waitEstablished(ctx, dc, o.GetName()); err != nil {
				return out, fmt.Errorf("%s: %w", what, err)
			}
			cached.Invalidate()
			mapper.Reset()
		}
	}
	return out, nil
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// waitEstablished waits (up to 30 s) for a CRD's Established condition.
func waitEstablished(ctx context.Context, dc dynamic.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		crd, err := dc.Resource(crdGVR).Get(ctx, name, getOpts)
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("crd %s: %w", name, err)
		}
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("crd %s not established: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Decode splits YAML or JSON documents into objects; a List's items
// become objects of their own; empty documents are skipped.
func Decode(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for i := 0; ; i++ {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.IsList() {
			l, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("document %d: %w", i, err)
			}
			for j := range l.Items {
				out = append(out, &l.Items[j])
			}
			continue
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("document %d: apiVersion and kind are required", i)
		}
		out = append(out, u)
	}
}

func ptr[T any](v T) *T { return &v }
