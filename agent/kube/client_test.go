package kube

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/wardproxy/ward/internal/kubetest"
)

// TestOptionalResourceNotServed: a tracked custom resource whose CRD is
// not installed does not hold the first sync back (the agent would never
// publish); Status names it, and once the CRD is installed its objects
// arrive.
func TestOptionalResourceNotServed(t *testing.T) {
	c := kubetest.Shared(t)
	cl, err := NewForConfig(c.Config(), Config{}.WithDefaults("node-o"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "optional.ward.example", Version: "v1", Resource: "gadgets"}
	inf := cl.DynamicInformers.ForResource(gvr).Informer()
	cl.TrackOptional("gadgets", inf, inf.HasSynced, gvr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cl.Run(ctx) }()
	select {
	case <-cl.Synced():
	case <-time.After(time.Minute):
		t.Fatal("not synced: the agent waits for a resource the API server does not serve")
	}
	if st := cl.Status(); !slices.Equal(st.NotServed, []string{"gadgets"}) {
		t.Errorf("NotServed %v, want [gadgets]", st.NotServed)
	}
	c.ApplyYAML(t, `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.optional.ward.example}
spec:
  group: optional.ward.example
  scope: Cluster
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
---
apiVersion: optional.ward.example/v1
kind: Gadget
metadata: {name: g1}
`)
	converge(t, "the gadget listed once the CRD is served", func() error {
		st := cl.Status()
		if len(st.NotServed) != 0 || st.Resources["gadgets"] != 1 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}
