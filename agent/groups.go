package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/policy"

	"github.com/wardproxy/ward/policy/groups"
	"github.com/wardproxy/ward/policy/groups/aws"
)

// ToGroupsConfig is the node config's toGroups block: the cloud provider
// that resolves toGroups/fromGroups into derivative policies (Cilium's
// operator does it with --aws-* options).
type ToGroupsConfig struct {
	// AWS is the EC2 provider; without it policies with groups get no
	// derivative and the status says so.
	AWS *aws.Config `json:"aws,omitempty"`
	// Interval between refreshes of every derivative (a Go duration such
	// as "30s"); default 1m.
	Interval string `json:"interval,omitempty"`
}

// validate checks the block; p is its path in the config.
func (c *ToGroupsConfig) validate(p string) error {
	if c == nil || c.Interval == "" {
		return nil
	}
	d, err := time.ParseDuration(c.Interval)
	if err != nil || d <= 0 {
		return fmt.Errorf("%s.interval %q: want a positive duration such as \"1m\"", p, c.Interval)
	}
	return nil
}

// runGroups keeps the derivative policies of the policies with groups
// (policy/groups.Controller) in the engine's repository.
func (a *Agent) runGroups(ctx context.Context, g *errgroup.Group) {
	if a.eng == nil {
		return
	}
	c := &groups.Controller{Repo: a.eng.repo, Log: a.log, OnChange: func() { a.eng.publish(ctx) }}
	if tg := a.cfg.ToGroups; tg != nil {
		c.Interval, _ = time.ParseDuration(tg.Interval) // validated
		if tg.AWS != nil {
			p, err := aws.New(ctx, *tg.AWS)
			if err != nil {
				a.log.Warn("toGroups: aws provider", "error", err)
			} else {
				c.Provider = p
			}
		}
	}
	if a.kube != nil {
		c.Mirror = a.mirrorDerivative
	}
	a.groups = c
	g.Go(func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("toGroups controller: panic: %v", r)
			}
		}()
		return c.Run(ctx)
	})
}

// Labels of a derivative policy object (Cilium's operator's).
const (
	labelPolicyKind   = "io.cilium.network.policy.kind"
	labelPolicyParent = "io.cilium.network.policy.parent.uuid"
)

// mirrorDerivative writes the derivative of a policy that came from
// Kubernetes as a policy object beside it, as Cilium's operator does:
// NAME-groups-HASH, labelled as a derivative, owned by its parent (so the
// garbage collector removes it with the parent too), applied server-side
// by the field manager every node shares (their copies are identical).
// The agent enforces its own derivative in any case; the object makes it
// visible to kubectl. A removed derivative is deleted.
func (a *Agent) mirrorDerivative(ctx context.Context, parent, d, old *policy.Policy) error {
	if parent == nil || !strings.HasPrefix(parent.File, kube.OriginPrefix) {
		return nil
	}
	gvr := kube.CNPResource
	if parent.Kind == policy.KindCCNP {
		gvr = kube.CCNPResource
	}
	var ri dynamic.ResourceInterface = a.kube.Dynamic.Resource(gvr)
	if parent.Metadata.Namespace != "" {
		ri = a.kube.Dynamic.Resource(gvr).Namespace(parent.Metadata.Namespace)
	}
	if d == nil {
		err := ri.Delete(ctx, old.Metadata.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete derivative %s: %w", old.Key(), err)
		}
		return nil
	}
	md := map[string]any{
		"name":   d.Metadata.Name,
		"labels": map[string]any{labelPolicyKind: "derivative", labelPolicyParent: parent.Metadata.UID},
	}
	if parent.Metadata.Namespace != "" {
		md["namespace"] = parent.Metadata.Namespace
	}
	if parent.Metadata.UID != "" {
		md["ownerReferences"] = []any{map[string]any{"apiVersion": policy.APIVersion, "kind": parent.Kind, "name": parent.Metadata.Name, "uid": parent.Metadata.UID}}
	}
	obj := map[string]any{"apiVersion": policy.APIVersion, "kind": parent.Kind, "metadata": md}
	for field, v := range map[string]any{"spec": d.Spec, "specs": d.Specs} {
		if field == "spec" && d.Spec == nil || field == "specs" && len(d.Specs) == 0 {
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("derivative %s: %w", d.Key(), err)
		}
		var m any
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("derivative %s: %w", d.Key(), err)
		}
		obj[field] = m
	}
	u := &unstructured.Unstructured{Object: obj}
	if _, err := ri.Apply(ctx, d.Metadata.Name, u, metav1.ApplyOptions{FieldManager: "ward-togroups", Force: true}); err != nil {
		return fmt.Errorf("apply derivative %s: %w", d.Key(), err)
	}
	return nil
}
