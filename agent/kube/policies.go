package kube

// The policy source: CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
// objects (cilium.io/v2, through the dynamic client, so ward's CRDs and
// Cilium's own serve alike) parsed by ward's policy parser (the same
// validation and field-path errors as the policy directory) into the
// agent's policy repository, beside the directory's policies.
//
// An object that fails to parse is reported (its status says Valid=False
// with the field path, an Event is recorded) and the rules of its last
// good version stay enforced: ward's fail-closed rule, "the enforced
// policy is left untouched by an invalid change", rather than Cilium's
// dropping of the object's rules (which would open what a deny rule of it
// closed, or close what it opened). A new object that was never valid
// enforces nothing. Deleting the object removes its rules.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"

	"github.com/wardproxy/ward/policy"
)

// The policy resources.
var (
	CNPResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CCNPResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

// PolicySink receives the policies; *policy.Repository implements it.
type PolicySink interface {
	Upsert(p *policy.Policy)
	Delete(k policy.Key) bool
	// Policies lists the sink's policies: an object whose key a policy of
	// another source (a file of the policy directory) holds is refused.
	Policies() []*policy.Policy
}

var _ PolicySink = (*policy.Repository)(nil)

// OriginPrefix starts policy.Policy.File of the policies from Kubernetes:
// "k8s:CiliumNetworkPolicy/ns/name" (what `ward endpoint get` shows as
// the rule's source and origin).
const OriginPrefix = "k8s:"

// Policies is the policy source. Create it with WatchPolicies before
// Client.Run; run it with Run.
type Policies struct {
	c        *Client
	sink     PolicySink
	onChange func()
	log      *slog.Logger
	infs     map[string]cache.SharedIndexInformer // by kind

	flushMu sync.Mutex // one Flush at a time
	mu      sync.Mutex
	objs    map[policy.Key]*PolicyState
	dirty   map[policy.Key]bool
	wake    chan struct{}
	// changed is closed and replaced when a flush changed the states
	// (the status writer waits on it).
	changed chan struct{}
}

// PolicyState is one policy object as the source holds it.
type PolicyState struct {
	Key policy.Key
	// UID, Generation and ResourceVersion are the object's last seen.
	UID             string
	Generation      int64
	ResourceVersion string
	// Err is the last seen version's error (nil: valid and enforced).
	Err error
	// Enforced: the rules of a version of the object are in the
	// repository (the last seen one when Err is nil, else the last good
	// one); GoodGeneration is that version's generation.
	Enforced       bool
	GoodGeneration int64
	// Conditions are the object's status conditions as last seen (for
	// their lastTransitionTime); NodeStatus is this node's entry of
	// status.nodes as last seen (the status writer skips what already
	// says what it would write).
	Conditions []any
	NodeStatus map[string]any
}

// WatchPolicies registers the policy informers on c's dynamic factory
// (tracked: the agent's first publish waits for them) and returns the
// source. onChange is called (from Run's goroutine) after the sink
// changed, once per batch of object changes.
func (c *Client) WatchPolicies(sink PolicySink, onChange func()) *Policies {
	p := &Policies{c: c, sink: sink, onChange: onChange, log: c.log.With("source", "kubernetes policies"),
		infs: map[string]cache.SharedIndexInformer{}, objs: map[policy.Key]*PolicyState{}, dirty: map[policy.Key]bool{},
		wake: make(chan struct{}, 1), changed: make(chan struct{})}
	for kind, gvr := range map[string]schema.GroupVersionResource{policy.KindCNP: CNPResource, policy.KindCCNP: CCNPResource} {
		inf := c.DynamicInformers.ForResource(gvr).Informer()
		mark := func(obj any) {
			key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
			if err != nil {
				return
			}
			ns, name, _ := cache.SplitMetaNamespaceKey(key)
			p.mu.Lock()
			p.dirty[policy.Key{Kind: kind, Namespace: ns, Name: name}] = true
			p.mu.Unlock()
			select {
			case p.wake <- struct{}{}:
			default:
			}
		}
		reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    mark,
			UpdateFunc: func(_, obj any) { mark(obj) },
			DeleteFunc: mark,
		})
		synced := inf.HasSynced
		if err == nil {
			synced = reg.HasSynced
		}
		// Optional: without the CRDs there is no such policy, and the
		// agent does not wait for them.
		c.TrackOptional(gvr.Resource, inf, synced, gvr)
		p.infs[kind] = inf
	}
	return p
}

// Run applies the objects' changes until ctx is done.
func (p *Policies) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		}
		if p.Flush() {
			p.onChange()
		}
	}
}

// Flush applies the pending object changes to the sink now and reports
// whether the sink changed (Run calls it; the agent too, before its
// first publish, once the client is Synced).
func (p *Policies) Flush() bool {
	p.flushMu.Lock()
	defer p.flushMu.Unlock()
	p.mu.Lock()
	keys := make([]policy.Key, 0, len(p.dirty))
	for k := range p.dirty {
		keys = append(keys, k)
	}
	clear(p.dirty)
	p.mu.Unlock()
	slices.SortFunc(keys, func(a, b policy.Key) int { return strings.Compare(a.String(), b.String()) })
	changed, touched := false, false
	for _, k := range keys {
		c, t := p.sync(k)
		changed = changed || c
		touched = touched || t
	}
	if touched {
		p.mu.Lock()
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	return changed
}

// sync brings one object's rules in line with the informer's cache. It
// reports whether the sink changed and whether the object's state did.
func (p *Policies) sync(k policy.Key) (sinkChanged, stateChanged bool) {
	inf := p.infs[k.Kind]
	cacheKey := k.Name
	if k.Namespace != "" {
		cacheKey = k.Namespace + "/" + k.Name
	}
	item, exists, err := inf.GetIndexer().GetByKey(cacheKey)
	p.mu.Lock()
	st := p.objs[k]
	p.mu.Unlock()
	if err != nil || !exists {
		if st == nil {
			return false, false
		}
		p.mu.Lock()
		delete(p.objs, k)
		p.mu.Unlock()
		if st.Enforced {
			p.sink.Delete(k)
			p.log.Info("policy deleted", "policy", k.String())
			return true, true
		}
		return false, true
	}
	obj, ok := item.(*unstructured.Unstructured)
	if !ok {
		return false, false
	}
	if st != nil && st.UID == string(obj.GetUID()) && st.Generation == obj.GetGeneration() && obj.GetGeneration() != 0 {
		// A status or metadata-only update (our own status writes among
		// them): the rules are unchanged.
		p.mu.Lock()
		st.ResourceVersion = obj.GetResourceVersion()
		st.Conditions, _, _ = unstructured.NestedSlice(obj.Object, "status", "conditions")
		st.NodeStatus, _, _ = unstructured.NestedMap(obj.Object, "status", "nodes", p.c.cfg.NodeName)
		p.mu.Unlock()
		return false, false
	}
	next := &PolicyState{Key: k, UID: string(obj.GetUID()), Generation: obj.GetGeneration(), ResourceVersion: obj.GetResourceVersion()}
	next.Conditions, _, _ = unstructured.NestedSlice(obj.Object, "status", "conditions")
	next.NodeStatus, _, _ = unstructured.NestedMap(obj.Object, "status", "nodes", p.c.cfg.NodeName)
	if st != nil && st.UID == next.UID {
		next.Enforced, next.GoodGeneration = st.Enforced, st.GoodGeneration
	} else if st != nil && st.Enforced {
		// Deleted and created again meanwhile: the old object's rules go
		// (they are replaced below when the new one is valid).
		p.sink.Delete(k)
		sinkChanged = true
	}
	pol, err := ParsePolicy(k.Kind, obj)
	if err == nil {
		err = p.collision(k)
	}
	if err != nil {
		next.Err = err
		p.log.Warn("policy invalid: its last good version stays enforced", "policy", k.String(), "generation", next.Generation, "error", err)
	} else {
		for _, w := range pol.Warnings {
			p.log.Warn("policy warning", "policy", k.String(), "warning", w.Error())
		}
		p.sink.Upsert(pol)
		next.Enforced, next.GoodGeneration = true, next.Generation
		sinkChanged = true
		p.log.Info("policy applied", "policy", k.String(), "generation", next.Generation)
	}
	p.mu.Lock()
	p.objs[k] = next
	p.mu.Unlock()
	return sinkChanged, true
}

// collision refuses an object whose key a policy of another source holds.
func (p *Policies) collision(k policy.Key) error {
	for _, q := range p.sink.Policies() {
		if q.Key() == k && !strings.HasPrefix(q.File, OriginPrefix) {
			return fmt.Errorf("%s%s: policy %s is already defined by the policy directory (%s)", OriginPrefix, k, k, q.File)
		}
	}
	return nil
}

// States returns every object's state, sorted by key.
func (p *Policies) States() []PolicyState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PolicyState, 0, len(p.objs))
	for _, st := range p.objs {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b PolicyState) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	return out
}

// Changed is closed at the next flush that changes an object's state.
func (p *Policies) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// ParsePolicy turns a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy
// object (kind is the resource's) into a validated policy through ward's
// parser; its File is "k8s:Kind/namespace/name". Only the fields a
// policy has are read: apiVersion, kind, the metadata ward uses, spec,
// specs (status and the server's metadata are not the user's).
func ParsePolicy(kind string, obj *unstructured.Unstructured) (*policy.Policy, error) {
	md := map[string]any{"name": obj.GetName()}
	if ns := obj.GetNamespace(); ns != "" {
		md["namespace"] = ns
	}
	if l := obj.GetLabels(); len(l) > 0 {
		md["labels"] = l
	}
	if a := obj.GetAnnotations(); len(a) > 0 {
		md["annotations"] = a
	}
	if uid := obj.GetUID(); uid != "" {
		md["uid"] = string(uid)
	}
	m := map[string]any{"apiVersion": policy.APIVersion, "kind": kind, "metadata": md}
	for _, f := range []string{"spec", "specs"} {
		if v, ok := obj.Object[f]; ok && v != nil {
			m[f] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", kind, obj.GetName(), err)
	}
	key := policy.Key{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
	return policy.ParseOne(OriginPrefix+key.String(), b)
}
