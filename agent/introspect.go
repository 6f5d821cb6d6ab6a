package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/policy"
)

// The read-only introspection of the live agent (`ward endpoint`, `ward
// policy get`, `ward identity`, `ward ip list`, `ward fqdn cache list`):
// views of the last published state, the datapath's ipcache and the DNS
// proxy's cache, served on the status socket (agent/api paths).

// endpointState is the lifecycle state of a local workload (the seed's
// "Endpoint Lifecycle"), with the error of a ward-specific state:
//
//   - no identity in the repository: waiting-for-identity;
//   - being published with a policy other than the last published one:
//     regenerating;
//   - before the first publish: restoring when the pinned datapath still
//     holds the endpoint from the previous run (its old policy enforces),
//     else waiting-to-regenerate;
//   - published without it, with another identity, or with a policy the
//     repository has changed since: waiting-to-regenerate;
//   - then the datapath's verdict on it: waiting-for-interface,
//     locked-down, or ready.
//
// current is the repository's snapshot now (nil: not computed).
func (a *Agent) endpointState(w Workload, last *State, current *policy.Snapshot, pinned map[uint64]bool) (string, string) {
	if current == nil {
		current = a.eng.repo.Snapshot()
	}
	now, ok := current.Endpoint(w.ID)
	if !ok {
		return api.StateWaitingForIdentity, ""
	}
	if a.regen != nil {
		if inFlight := a.regen.st.Load(); inFlight != nil && inFlight != last {
			if p, ok := inFlight.Policy.Endpoint(w.ID); ok {
				var old *policy.EndpointPolicy
				if last != nil {
					old, _ = last.Policy.Endpoint(w.ID)
				}
				if old != p {
					return api.StateRegenerating, ""
				}
			}
		}
	}
	if last == nil {
		if pinned[w.ID] {
			return api.StateRestoring, ""
		}
		return api.StateWaitingToRegenerate, ""
	}
	pub, ok := last.Policy.Endpoint(w.ID)
	if !ok || !slices.ContainsFunc(last.Workloads, func(x Workload) bool { return x.ID == w.ID }) ||
		pub.Identity != now.Identity || pub != now {
		return api.StateWaitingToRegenerate, ""
	}
	if a.dp != nil {
		if err := a.dp.endpointError(w.ID); errors.Is(err, errNoInterface) {
			return api.StateWaitingForInterface, err.Error()
		} else if err != nil {
			return api.StateLockedDown, err.Error()
		}
	}
	return api.StateReady, ""
}

// regenerationMarker is the engine's first consumer (Agent.regen, set in
// New): it notes the state a publish is handing to the consumers, so that
// an endpoint whose policy that publish changes is "regenerating" until
// the publish completes.
type regenerationMarker struct{ st atomic.Pointer[State] }

// Apply implements Consumer.
func (m *regenerationMarker) Apply(_ context.Context, st *State) error {
	m.st.Store(st)
	return nil
}

// pinnedEndpoints are the endpoint ids the datapath's pinned endpoint map
// holds (those of a previous run included).
func (a *Agent) pinnedEndpoints() map[uint64]bool {
	out := map[uint64]bool{}
	if a.dp == nil {
		return out
	}
	for _, ep := range a.dp.dp.Endpoints() {
		out[uint64(ep.ID)] = true
	}
	return out
}

// endpointDetails returns the local endpoints (and those being
// disconnected), sorted by id; with rules, each one's rules in force.
func (a *Agent) endpointDetails(withRules bool) []api.EndpointDetail {
	out := []api.EndpointDetail{}
	if a.eng == nil {
		return out
	}
	last := a.eng.last.Load()
	current := a.eng.repo.Snapshot()
	pinned := a.pinnedEndpoints()
	seen := map[uint64]bool{}
	detail := func(w Workload, state, errMsg string) api.EndpointDetail {
		d := api.EndpointDetail{Endpoint: api.Endpoint{Name: w.Name, ID: w.ID, State: state, Error: errMsg},
			Namespace: w.Namespace, Interface: w.Interface}
		if d.Namespace == "" {
			d.Namespace = "default"
		}
		for _, ip := range w.Addrs {
			d.IPs = append(d.IPs, ip.String())
		}
		// What is in force: the published policy, else (not published
		// yet) what the repository resolves.
		p, ok := (*policy.EndpointPolicy)(nil), false
		if last != nil {
			p, ok = last.Policy.Endpoint(w.ID)
			d.PolicyRevision = last.Policy.Revision
		}
		if !ok {
			p, ok = current.Endpoint(w.ID)
			d.PolicyRevision = 0
		}
		if ok {
			d.Identity = uint32(p.Identity)
			d.Labels = p.Labels.Strings()
			d.EnforceIngress = p.Ingress != nil && p.Ingress.Enforced
			d.EnforceEgress = p.Egress != nil && p.Egress.Enforced
			d.Audit = p.Audit
			if withRules {
				d.Rules = a.rulesOf(p)
			}
		}
		return d
	}
	for _, w := range a.eng.workloads() {
		if w.Remote {
			continue
		}
		seen[w.ID] = true
		state, msg := a.endpointState(w, last, current, pinned)
		out = append(out, detail(w, state, msg))
	}
	if last != nil {
		for _, w := range last.Workloads {
			if !w.Remote && !seen[w.ID] {
				out = append(out, detail(w, api.StateDisconnecting, ""))
			}
		}
	}
	if d, ok := a.hostEndpointDetail(last, current, withRules); ok {
		out = append(out, d) // the host endpoint (hostfw.go)
	}
	slices.SortFunc(out, func(x, y api.EndpointDetail) int {
		if x.ID < y.ID {
			return -1
		}
		if x.ID > y.ID {
			return 1
		}
		return 0
	})
	return out
}

// rulesOf names the rules that give an endpoint's policy its entries.
func (a *Agent) rulesOf(p *policy.EndpointPolicy) []api.RuleRef {
	paths := map[policy.Key][]string{}
	var order []policy.Key
	add := func(o *policy.Origin) {
		if o == nil {
			return
		}
		if _, ok := paths[o.Policy]; !ok {
			order = append(order, o.Policy)
		}
		if !slices.Contains(paths[o.Policy], o.Path) {
			paths[o.Policy] = append(paths[o.Policy], o.Path)
		}
	}
	for _, d := range []*policy.DirectionPolicy{p.Ingress, p.Egress} {
		if d == nil {
			continue
		}
		for _, e := range d.Allow {
			add(e.Origin)
		}
		for _, e := range d.Deny {
			add(e.Origin)
		}
		for _, l7 := range d.Proxy {
			for _, s := range l7.Selections {
				for _, o := range s.Origins {
					add(o)
				}
			}
		}
	}
	// A policy that turns default deny on and allows nothing (ingress:
	// [{}], say) is in force too: listed by its rules.
	withEntries := len(order)
	for _, d := range []*policy.DirectionPolicy{p.Ingress, p.Egress} {
		if d == nil {
			continue
		}
		for _, o := range d.EnforcedBy {
			if !slices.Contains(order[:withEntries], o.Policy) {
				add(o)
			}
		}
	}
	srcs := a.policySources()
	byKey := map[policy.Key]*policy.Policy{}
	for _, pol := range a.eng.repo.Policies() {
		byKey[pol.Key()] = pol
	}
	out := []api.RuleRef{}
	for _, k := range order {
		slices.Sort(paths[k])
		ref := api.RuleRef{Policy: k.String(), Paths: paths[k], Labels: []string{}}
		if pol := byKey[k]; pol != nil {
			ref.Source, ref.Origin = srcs.of(pol)
			ref.Labels = derivedLabels(pol, ref.Source)
		}
		out = append(out, ref)
	}
	return out
}

// policySources tells where each policy came from: the policy directory
// (origin: its file) or else Kubernetes (origin: the object, or what the
// source named it by).
type policySources map[policy.Key]string // directory policies: their file

func (a *Agent) policySources() policySources {
	out := policySources{}
	if a.src == nil {
		return out
	}
	for _, f := range a.src.Status() {
		for _, k := range f.Policies {
			out[k] = f.Path
		}
	}
	return out
}

// of returns a policy's source, "directory" or "k8s" as Cilium's rule
// labels name them, and its origin.
func (ps policySources) of(p *policy.Policy) (source, origin string) {
	if f, ok := ps[p.Key()]; ok {
		return "directory", f
	}
	if o, ok := strings.CutPrefix(p.File, "k8s:"); ok {
		return "k8s", o
	}
	if p.File != "" {
		return "k8s", p.File
	}
	return "k8s", p.Key().String()
}

// derivedLabels are the labels Cilium gives the rules of a policy object
// (io.cilium.k8s.policy.derived-from, name, namespace, uid), with the
// policy's source as their source.
func derivedLabels(p *policy.Policy, source string) []string {
	ls := []string{
		source + ":io.cilium.k8s.policy.derived-from=" + p.Kind,
		source + ":io.cilium.k8s.policy.name=" + p.Metadata.Name,
	}
	if p.Metadata.Namespace != "" {
		ls = append(ls, source+":io.cilium.k8s.policy.namespace="+p.Metadata.Namespace)
	}
	if p.Metadata.UID != "" {
		ls = append(ls, source+":io.cilium.k8s.policy.uid="+p.Metadata.UID)
	}
	return ls
}

// ruleLabels are a rule's own labels (source "unspec" when it has none,
// as Cilium's) followed by the derived ones.
func ruleLabels(r *policy.Rule, derived []string) []string {
	var out []string
	for _, l := range r.Labels {
		src := l.Source
		if src == "" {
			src = "unspec"
		}
		s := src + ":" + l.Key
		if l.Value != "" {
			s += "=" + l.Value
		}
		out = append(out, s)
	}
	return append(out, derived...)
}

// labelMatches: a filter "key=value" matches a label of any source,
// "source:key=value" only that source's.
func labelMatches(filter, label string) bool {
	if filter == label {
		return true
	}
	_, rest, ok := strings.Cut(label, ":")
	return ok && filter == rest
}

// policyRules returns the rules in force, each with its labels and
// source; with filters, only the rules carrying every filter label.
func (a *Agent) policyRules(filters []string) (api.PolicyRules, error) {
	out := api.PolicyRules{Rules: []api.PolicyRule{}}
	if a.eng == nil {
		return out, nil
	}
	if s := a.eng.last.Load(); s != nil {
		out.Revision = s.Policy.Revision
	}
	srcs := a.policySources()
	for _, p := range a.eng.repo.Policies() {
		src, origin := srcs.of(p)
		derived := derivedLabels(p, src)
		for _, r := range p.Rules() {
			labels := ruleLabels(r, derived)
			if !slices.ContainsFunc(filters, func(f string) bool {
				return !slices.ContainsFunc(labels, func(l string) bool { return labelMatches(f, l) })
			}) {
				rule, err := cilumRuleJSON(r, labels)
				if err != nil {
					return out, fmt.Errorf("policy %s: %w", p.Key(), err)
				}
				out.Rules = append(out.Rules, api.PolicyRule{Rule: rule, Policy: p.Key().String(), Source: src, Origin: origin, Labels: labels})
			}
		}
	}
	return out, nil
}

// cilumRuleJSON is the rule as Cilium's `cilium policy get` prints it: the
// spec with its labels in {key, value, source} form.
func cilumRuleJSON(r *policy.Rule, labels []string) (json.RawMessage, error) {
	c := *r
	c.Labels = nil
	for _, l := range labels {
		src, kv, _ := strings.Cut(l, ":")
		k, v, _ := strings.Cut(kv, "=")
		c.Labels = append(c.Labels, policy.RuleLabel{Key: k, Value: v, Source: src})
	}
	return json.Marshal(&c)
}

// identityKind classifies an identity as the metrics do.
func identityKind(id *policy.Identity) string {
	switch {
	case id.ID.IsReserved():
		return "reserved"
	case id.Prefix.IsValid():
		return "cidr"
	case len(id.Labels) > 0 && id.Labels[0].Source == policy.SourceFQDN:
		return "fqdn"
	}
	return "endpoint"
}

// identities returns the identities of the last published state (the
// repository's now before the first publish).
func (a *Agent) identities() []api.Identity {
	out := []api.Identity{}
	if a.eng == nil {
		return out
	}
	for _, id := range a.eng.state().Policy.Identities() {
		out = append(out, api.Identity{ID: uint32(id.ID), Labels: id.Labels.Strings(), Kind: identityKind(id)})
	}
	return out
}

// ipcacheEntries returns the datapath's ipcache (empty without the
// datapath), each prefix with its identity's labels.
func (a *Agent) ipcacheEntries() []api.IPCacheEntry {
	out := []api.IPCacheEntry{}
	if a.dp == nil {
		return out
	}
	var snap *policy.Snapshot
	if a.eng != nil {
		snap = a.eng.state().Policy
	}
	for _, e := range a.dp.ipc.Entries() {
		ent := api.IPCacheEntry{Prefix: e.Prefix.String(), Identity: e.Identity, Source: e.Owner.String()}
		if snap != nil {
			if id, ok := snap.Identity(policy.NumericIdentity(e.Identity)); ok {
				ent.Labels = id.Labels.Strings()
			}
		}
		out = append(out, ent)
	}
	return out
}

// fqdnEntries returns the DNS proxy's cache (false without a DNS proxy).
func (a *Agent) fqdnEntries() ([]api.FQDNEntry, bool) {
	px := a.obs.dns
	if px == nil {
		return nil, false
	}
	out := []api.FQDNEntry{}
	for _, e := range px.Cache().Entries() {
		out = append(out, api.FQDNEntry{Endpoint: e.Endpoint, Name: e.Name, IP: e.IP.String(), Expires: e.Expires, Zombie: e.Zombie})
	}
	return out, true
}

// handleIntrospect registers the introspection paths on the status mux.
func (a *Agent) handleIntrospect(mux *http.ServeMux) {
	reply := func(w http.ResponseWriter, v any) {
		w.Header().Set("content-type", "application/json")
		if err := json.NewEncoder(w).Encode(v); err != nil {
			a.log.Debug("introspection write", "error", err)
		}
	}
	mux.HandleFunc("GET "+api.EndpointsPath, func(w http.ResponseWriter, _ *http.Request) {
		reply(w, a.endpointDetails(false))
	})
	mux.HandleFunc("GET "+api.EndpointsPath+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			http.Error(w, fmt.Sprintf("endpoint id %q: not a number", r.PathValue("id")), http.StatusBadRequest)
			return
		}
		for _, d := range a.endpointDetails(true) {
			if d.ID == id {
				reply(w, d)
				return
			}
		}
		http.Error(w, fmt.Sprintf("endpoint %d not found", id), http.StatusNotFound)
	})
	mux.HandleFunc("GET "+api.PolicyPath, func(w http.ResponseWriter, r *http.Request) {
		rules, err := a.policyRules(r.URL.Query()["labels"])
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		reply(w, rules)
	})
	mux.HandleFunc("GET "+api.IdentitiesPath, func(w http.ResponseWriter, _ *http.Request) {
		reply(w, a.identities())
	})
	mux.HandleFunc("GET "+api.IdentitiesPath+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 32)
		if err != nil {
			http.Error(w, fmt.Sprintf("identity %q: not a number", r.PathValue("id")), http.StatusBadRequest)
			return
		}
		for _, i := range a.identities() {
			if uint64(i.ID) == id {
				reply(w, i)
				return
			}
		}
		http.Error(w, fmt.Sprintf("identity %d not found", id), http.StatusNotFound)
	})
	mux.HandleFunc("GET "+api.IPCachePath, func(w http.ResponseWriter, _ *http.Request) {
		reply(w, a.ipcacheEntries())
	})
	mux.HandleFunc("GET "+api.FQDNCachePath, func(w http.ResponseWriter, _ *http.Request) {
		es, ok := a.fqdnEntries()
		if !ok {
			http.Error(w, "no DNS proxy: it runs with the datapath (datapath.enabled) and a policy directory", http.StatusNotFound)
			return
		}
		reply(w, es)
	})
}
