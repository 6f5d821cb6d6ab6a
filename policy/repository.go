package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Config configures a Repository. The zero value is usable: enforcement
// mode default, no audit, a fresh Allocator.
type Config struct {
	Mode EnforcementMode // "" means ModeDefault
	// Audit puts every endpoint in policy audit mode.
	Audit bool
	// LabelFilter keeps an endpoint's identity-relevant labels (Cilium's
	// label prefixes); nil: every label is relevant. The host endpoint's
	// node labels are not filtered.
	LabelFilter *LabelFilter
	// ClusterName, when set, is the io.cilium.k8s.policy.cluster label of
	// every endpoint whose labels name no cluster (Cilium's cluster-name).
	ClusterName string
	// Allocator allocates endpoint and CIDR identities; nil: NewAllocator().
	// Share it with the DNS proxy so FQDN identities come from it too.
	Allocator *Allocator
}

// Validate checks c.
func (c Config) Validate() error {
	switch c.Mode {
	case "", ModeDefault, ModeAlways, ModeNever:
		return nil
	}
	return fmt.Errorf("unknown enforcement mode %q (want default, always or never)", c.Mode)
}

// Endpoint is a local workload whose policy the repository resolves.
type Endpoint struct {
	ID uint64
	// Labels are the endpoint's labels, the namespace label included (see
	// K8sLabels). An endpoint with the reserved:host label is the host
	// endpoint (identity 1; its other labels are node labels).
	Labels     Labels
	NamedPorts []NamedPort
	// Audit puts this endpoint in policy audit mode.
	Audit bool
}

// NamedPort is a container port name.
type NamedPort struct {
	Name     string
	Port     uint16
	Protocol Protocol
}

// ServiceInfo is a Kubernetes service as toServices sees it.
type ServiceInfo struct {
	Name, Namespace string
	Labels          map[string]string
	// Selector is the service's pod selector; empty for a service without
	// selector, whose Prefixes (endpoint IPs) are used instead.
	Selector map[string]string
	Prefixes []netip.Prefix
}

// Repository holds policies, endpoints, services and identities and
// resolves them into immutable Snapshots, recomputing only the identities
// a change affects. Safe for concurrent use.
type Repository struct {
	mu    sync.Mutex
	cfg   Config
	alloc *Allocator

	policies  map[Key]*compiledPolicy
	order     []Key // insertion order, for stable output
	endpoints map[uint64]*epState
	services  map[string]*ServiceInfo
	// identities known to selectors: reserved, endpoint, CIDR and FQDN.
	identities map[NumericIdentity]*Identity
	idRefs     map[NumericIdentity]int // repository-held references
	hostLabels Labels

	selections map[string]*selection
	policyOf   map[NumericIdentity]*identityPolicy // per subject identity
	dirty      map[NumericIdentity]bool
	revision   uint64
	snap       *Snapshot // nil when something changed
	last       *Snapshot
	// identVersion changes with the identity set; snapshots share the
	// identity maps while it stays the same.
	identVersion, snapIdentVersion uint64
	gcThreshold                    int
	fqdnIDs                        map[NumericIdentity]bool // from AllocateFQDN
	rules                          *ruleIndex               // nil until the first Snapshot
	policySeq                      int
}

type epState struct {
	ep    Endpoint
	ident *Identity
}

// selection is the cached set of identities a peer selects.
type selection struct {
	p        peer
	ids      []NumericIdentity // sorted
	wildcard bool
}

// identityPolicy is the resolved policy of a subject identity.
type identityPolicy struct {
	dirs       [2]*DirectionPolicy
	uses       map[string]bool // selection keys used
	namedPorts bool
}

// NewRepository returns an empty repository.
func NewRepository(cfg Config) *Repository {
	if cfg.Mode == "" {
		cfg.Mode = ModeDefault
	}
	a := cfg.Allocator
	if a == nil {
		a = NewAllocator()
	}
	r := &Repository{
		cfg: cfg, alloc: a,
		policies:   make(map[Key]*compiledPolicy),
		endpoints:  make(map[uint64]*epState),
		services:   make(map[string]*ServiceInfo),
		identities: make(map[NumericIdentity]*Identity),
		idRefs:     make(map[NumericIdentity]int),
		selections: make(map[string]*selection),
		policyOf:   make(map[NumericIdentity]*identityPolicy),
		dirty:      make(map[NumericIdentity]bool),
	}
	for _, id := range a.All() {
		if id.ID.IsReserved() {
			r.identities[id.ID] = id
			r.idRefs[id.ID] = 1 // permanent
		}
	}
	return r
}

// Allocator returns the repository's identity allocator.
func (r *Repository) Allocator() *Allocator { return r.alloc }

// Upsert adds p or replaces the policy with the same Key. p must have
// come from Parse (validated) and must not be modified afterwards.
func (r *Repository) Upsert(p *Policy) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := p.Key()
	old := r.policies[k]
	cp := r.compilePolicy(p)
	if old != nil {
		cp.seq = old.seq
	} else {
		r.policySeq++
		cp.seq = r.policySeq
		r.order = append(r.order, k)
	}
	r.policies[k] = cp
	r.reindex(old, cp)
	r.addCIDRIdentities(cp.cidrs)
	r.invalidatePolicy(old)
	r.invalidatePolicy(cp)
	if old != nil {
		r.releaseCIDRIdentities(old.cidrs)
	}
}

// Delete removes the policy with key k; it reports whether it existed.
func (r *Repository) Delete(k Key) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.policies[k]
	if !ok {
		return false
	}
	delete(r.policies, k)
	r.reindex(old, nil)
	r.order = slices.DeleteFunc(r.order, func(x Key) bool { return x == k })
	r.invalidatePolicy(old)
	r.releaseCIDRIdentities(old.cidrs)
	return true
}

// Policies returns the policies in the repository in insertion order.
func (r *Repository) Policies() []*Policy {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Policy, 0, len(r.order))
	for _, k := range r.order {
		out = append(out, r.policies[k].policy)
	}
	return out
}

// UpsertEndpoint adds or updates an endpoint and returns its identity.
func (r *Repository) UpsertEndpoint(ep Endpoint) (*Identity, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.endpoints[ep.ID]
	var ident *Identity
	if ep.Labels.Has(SourceReserved, "host") {
		ident, _ = r.alloc.Lookup(IdentityHost)
		r.hostLabels = ep.Labels
		r.markDirty(IdentityHost)
	} else {
		if r.cfg.ClusterName != "" && !ep.Labels.Has(SourceK8s, LabelCluster) {
			ep.Labels = NewLabels(append(slices.Clone(ep.Labels), Label{Source: SourceK8s, Key: LabelCluster, Value: r.cfg.ClusterName})...)
		}
		ep.Labels = r.cfg.LabelFilter.Filter(ep.Labels)
		id, _, err := r.alloc.Allocate(ep.Labels)
		if err != nil {
			return nil, fmt.Errorf("allocate identity for endpoint %d: %w", ep.ID, err)
		}
		ident = id
		r.addIdentity(ident)
	}
	r.endpoints[ep.ID] = &epState{ep: ep, ident: ident}
	if old != nil {
		r.dropEndpointIdentity(old)
	}
	r.namedPortsChanged(old, ep)
	r.markDirty(ident.ID)
	return ident, nil
}

// DeleteEndpoint removes an endpoint.
func (r *Repository) DeleteEndpoint(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.endpoints[id]
	if !ok {
		return false
	}
	delete(r.endpoints, id)
	r.snap = nil
	r.dropEndpointIdentity(old)
	r.namedPortsChanged(old, Endpoint{})
	return true
}

func (r *Repository) dropEndpointIdentity(old *epState) {
	if old.ident.ID == IdentityHost {
		if cur, ok := r.endpoints[old.ep.ID]; !ok || cur.ident.ID != IdentityHost {
			r.hostLabels = nil
		}
		return
	}
	r.removeIdentityRef(old.ident.ID)
	r.alloc.Release(old.ident.ID)
}

func (r *Repository) namedPortsChanged(old *epState, ep Endpoint) {
	if (old == nil || len(old.ep.NamedPorts) == 0) && len(ep.NamedPorts) == 0 {
		return
	}
	for id, ip := range r.policyOf {
		if ip.namedPorts {
			r.markDirty(id)
		}
	}
}

// UpsertIdentity makes an identity allocated elsewhere (an FQDN identity
// of the DNS proxy, from the shared Allocator) known to selectors. Each call
// takes a reference; DeleteIdentity drops it.
func (r *Repository) UpsertIdentity(ident *Identity) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addIdentity(ident)
}

// DeleteIdentity drops a reference taken by UpsertIdentity.
func (r *Repository) DeleteIdentity(id NumericIdentity) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removeIdentityRef(id)
}

// UpsertService adds or replaces a service for toServices.
func (r *Repository) UpsertService(s ServiceInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.services[s.Namespace+"/"+s.Name] = &s
	r.recompileServicePolicies()
}

// DeleteService removes a service.
func (r *Repository) DeleteService(namespace, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.services, namespace+"/"+name)
	r.recompileServicePolicies()
}

func (r *Repository) recompileServicePolicies() {
	for k, cp := range r.policies {
		if !cp.usesService {
			continue
		}
		n := r.compilePolicy(cp.policy)
		n.seq = cp.seq
		r.policies[k] = n
		r.reindex(cp, n)
		r.addCIDRIdentities(n.cidrs)
		r.invalidatePolicy(cp)
		r.invalidatePolicy(n)
		r.releaseCIDRIdentities(cp.cidrs)
	}
}

func (r *Repository) addCIDRIdentities(ps []netip.Prefix) {
	for _, p := range ps {
		id, _, err := r.alloc.Allocate(CIDRLabels(p))
		if err != nil {
			continue
		}
		r.addIdentity(id)
	}
}

func (r *Repository) releaseCIDRIdentities(ps []netip.Prefix) {
	for _, p := range ps {
		id, ok := r.alloc.LookupLabels(CIDRLabels(p))
		if !ok {
			continue
		}
		r.removeIdentityRef(id.ID)
		r.alloc.Release(id.ID)
	}
}

func (r *Repository) addIdentity(id *Identity) {
	r.idRefs[id.ID]++
	if r.idRefs[id.ID] > 1 {
		return
	}
	r.identities[id.ID] = id
	r.identVersion++
	r.snap = nil
	for _, s := range r.selections {
		if s.wildcard || !s.p.selects(id) {
			continue
		}
		// Copy on write: snapshots share s.ids.
		i, _ := slices.BinarySearch(s.ids, id.ID)
		s.ids = slices.Insert(slices.Clip(s.ids), i, id.ID)
		r.selectionChanged(s.p.key())
	}
}

func (r *Repository) removeIdentityRef(id NumericIdentity) {
	if r.idRefs[id] == 0 {
		return
	}
	r.idRefs[id]--
	if r.idRefs[id] > 0 {
		return
	}
	delete(r.idRefs, id)
	if id.IsReserved() {
		return
	}
	delete(r.identities, id)
	r.identVersion++
	r.snap = nil
	delete(r.policyOf, id)
	delete(r.dirty, id)
	for _, s := range r.selections {
		if i, ok := slices.BinarySearch(s.ids, id); ok {
			s.ids = slices.Delete(slices.Clone(s.ids), i, i+1) // copy on write
			r.selectionChanged(s.p.key())
		}
	}
}

func (r *Repository) selectionChanged(key string) {
	for id, ip := range r.policyOf {
		if ip.uses[key] {
			r.markDirty(id)
		}
	}
}

func (r *Repository) markDirty(id NumericIdentity) {
	r.dirty[id] = true
	r.snap = nil
}

// invalidatePolicy marks every resolved subject identity cp's rules select.
// Identities without a resolved policy are computed at the next Snapshot
// anyway.
func (r *Repository) invalidatePolicy(cp *compiledPolicy) {
	if cp == nil {
		return
	}
	r.snap = nil
	if len(r.policyOf) == 0 {
		return
	}
	for _, cr := range cp.rules {
		if cr.host {
			if _, ok := r.policyOf[IdentityHost]; ok {
				r.markDirty(IdentityHost)
			}
			continue
		}
		sel := r.subjectSelection(cr)
		if sel.wildcard {
			for id := range r.policyOf {
				r.markDirty(id)
			}
			continue
		}
		for _, id := range sel.ids {
			if _, ok := r.policyOf[id]; ok {
				r.markDirty(id)
			}
		}
	}
}

// subjectSelection returns the identities an endpointSelector rule selects.
func (r *Repository) subjectSelection(cr *compiledRule) *selection {
	if cr.subjectSel == nil {
		cr.subjectSel = r.selectionFor(labelPeer{cr.subject})
	}
	return cr.subjectSel
}

// ruleIndex groups the rules by subject selection, each with its position
// in policy order. It is kept up to date by Upsert and Delete.
type ruleIndex struct {
	groups map[*selection][]seqRule
	host   []seqRule
}

type seqRule struct {
	seq int // policy sequence << 16 | rule index
	cr  *compiledRule
}

func (r *Repository) buildRuleIndex() *ruleIndex {
	ix := &ruleIndex{groups: map[*selection][]seqRule{}}
	for _, k := range r.order {
		r.indexPolicy(ix, r.policies[k])
	}
	return ix
}

func (r *Repository) indexPolicy(ix *ruleIndex, cp *compiledPolicy) {
	for i, cr := range cp.rules {
		sr := seqRule{seq: cp.seq<<16 | i, cr: cr}
		if cr.host {
			ix.host = append(ix.host, sr)
			continue
		}
		sel := r.subjectSelection(cr)
		ix.groups[sel] = append(ix.groups[sel], sr)
	}
}

func (r *Repository) unindexPolicy(ix *ruleIndex, cp *compiledPolicy) {
	drop := func(srs []seqRule, cr *compiledRule) []seqRule {
		return slices.DeleteFunc(slices.Clone(srs), func(x seqRule) bool { return x.cr == cr })
	}
	for _, cr := range cp.rules {
		if cr.host {
			ix.host = drop(ix.host, cr)
			continue
		}
		sel := r.subjectSelection(cr)
		if g := drop(ix.groups[sel], cr); len(g) > 0 {
			ix.groups[sel] = g
		} else {
			delete(ix.groups, sel)
		}
	}
}

// reindex replaces old's rules by cp's in the rule index (either may be
// nil).
func (r *Repository) reindex(old, cp *compiledPolicy) {
	if r.rules == nil {
		return // built at the next Snapshot
	}
	if old != nil {
		r.unindexPolicy(r.rules, old)
	}
	if cp != nil {
		r.indexPolicy(r.rules, cp)
	}
}

// rulesFor returns, for each identity in want, the rules selecting it in
// policy order.
func (r *Repository) rulesFor(want map[NumericIdentity]bool) map[NumericIdentity][]*compiledRule {
	if r.rules == nil {
		r.rules = r.buildRuleIndex()
	}
	tmp := make(map[NumericIdentity][]seqRule, len(want))
	if want[IdentityHost] {
		ls := r.subjectLabels(IdentityHost)
		for _, sr := range r.rules.host {
			if r.ruleSelects(sr.cr, IdentityHost, ls) {
				tmp[IdentityHost] = append(tmp[IdentityHost], sr)
			}
		}
	}
	for sel, rules := range r.rules.groups {
		switch {
		case sel.wildcard:
			for id := range want {
				if id != IdentityHost {
					tmp[id] = append(tmp[id], rules...)
				}
			}
		case len(sel.ids) > len(want):
			for id := range want {
				if _, ok := slices.BinarySearch(sel.ids, id); ok && id != IdentityHost {
					tmp[id] = append(tmp[id], rules...)
				}
			}
		default:
			for _, id := range sel.ids {
				if want[id] && id != IdentityHost {
					tmp[id] = append(tmp[id], rules...)
				}
			}
		}
	}
	out := make(map[NumericIdentity][]*compiledRule, len(tmp))
	for id, srs := range tmp {
		slices.SortFunc(srs, func(a, b seqRule) int { return a.seq - b.seq })
		crs := make([]*compiledRule, len(srs))
		for i, sr := range srs {
			crs[i] = sr.cr
		}
		out[id] = crs
	}
	return out
}

// subjectIDs are the identities that have endpoints (and the host).
func (r *Repository) subjectIDs() map[NumericIdentity]bool {
	out := make(map[NumericIdentity]bool)
	for _, e := range r.endpoints {
		out[e.ident.ID] = true
	}
	return out
}

func (r *Repository) subjectLabels(id NumericIdentity) Labels {
	if id == IdentityHost && r.hostLabels != nil {
		return r.hostLabels
	}
	if ident, ok := r.identities[id]; ok {
		return ident.Labels
	}
	if ident, ok := r.alloc.Lookup(id); ok {
		return ident.Labels
	}
	return nil
}

func (r *Repository) ruleSelects(cr *compiledRule, id NumericIdentity, ls Labels) bool {
	if cr.host {
		return id == IdentityHost && cr.subject.matches(ls)
	}
	return cr.subject.matches(ls)
}

// selectionFor returns the cached selection of p, computing it once.
func (r *Repository) selectionFor(p peer) *selection {
	k := p.key()
	if s, ok := r.selections[k]; ok {
		return s
	}
	s := &selection{p: p, wildcard: p.wildcard()}
	if !s.wildcard {
		for id, ident := range r.identities {
			if p.selects(ident) {
				s.ids = append(s.ids, id)
			}
		}
		slices.Sort(s.ids)
	}
	r.selections[k] = s
	return s
}

// Snapshot resolves what changed since the last call and returns an
// immutable view. Publish it with atomic.Pointer; never modify it.
func (r *Repository) Snapshot() *Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.snap != nil {
		return r.snap
	}
	r.revision++
	named := r.namedPortIndex()
	subjects := r.subjectIDs()
	want := map[NumericIdentity]bool{}
	for id := range subjects {
		if _, ok := r.policyOf[id]; !ok || r.dirty[id] {
			want[id] = true
		}
	}
	if len(want) > 0 {
		rules := r.rulesFor(want)
		for id := range want {
			r.policyOf[id] = r.resolveIdentity(id, rules[id], named)
		}
	}
	for id := range r.policyOf {
		if !subjects[id] {
			delete(r.policyOf, id)
		}
	}
	clear(r.dirty)
	r.gcSelections()

	prev := r.last
	s := &Snapshot{
		Revision:  r.revision,
		endpoints: make(map[uint64]*EndpointPolicy, len(r.endpoints)),
	}
	if prev != nil && r.snapIdentVersion == r.identVersion {
		s.identities, s.byLabels, s.cidrs = prev.identities, prev.byLabels, prev.cidrs
	} else {
		s.identities = make(map[NumericIdentity]*Identity, len(r.identities))
		s.byLabels = make(map[string]*Identity, len(r.identities))
		for id, ident := range r.identities {
			s.identities[id] = ident
			s.byLabels[ident.labelsKey()] = ident
			if ident.Prefix.IsValid() {
				s.cidrs = append(s.cidrs, ident)
			}
		}
		sort.Slice(s.cidrs, func(i, j int) bool { return s.cidrs[i].Prefix.Bits() > s.cidrs[j].Prefix.Bits() })
		r.snapIdentVersion = r.identVersion
	}
	for eid, e := range r.endpoints {
		ip := r.policyOf[e.ident.ID]
		audit := r.cfg.Audit || e.ep.Audit
		if prev != nil {
			if old, ok := prev.endpoints[eid]; ok && old.Ingress == ip.dirs[dirIn] &&
				old.Egress == ip.dirs[dirOut] && old.Audit == audit && old.Identity == e.ident.ID {
				s.endpoints[eid] = old
				continue
			}
		}
		s.endpoints[eid] = &EndpointPolicy{
			EndpointID: eid, Identity: e.ident.ID, Labels: e.ep.Labels, Audit: audit,
			Ingress: ip.dirs[dirIn], Egress: ip.dirs[dirOut],
		}
	}
	seen := map[string]bool{}
	for _, k := range r.order {
		for _, q := range r.policies[k].fqdns {
			if seen[q.String()] {
				continue
			}
			seen[q.String()] = true
			if m, err := q.Compile(); err == nil {
				s.fqdns = append(s.fqdns, m)
			}
		}
	}
	r.snap = s
	r.last = s
	return s
}

// gcSelections drops selections no policy uses any more.
func (r *Repository) gcSelections() {
	if len(r.selections) < max(1024, r.gcThreshold) {
		return
	}
	defer func() { r.gcThreshold = 2 * len(r.selections) }()
	used := map[string]bool{}
	for _, cp := range r.policies {
		for _, cr := range cp.rules {
			used[labelPeer{cr.subject}.key()] = true
		}
	}
	for _, ip := range r.policyOf {
		for k := range ip.uses {
			used[k] = true
		}
	}
	for k := range r.selections {
		if !used[k] {
			delete(r.selections, k)
		}
	}
}

// namedPortIndex maps identity -> port name -> ports, and "" -> all.
func (r *Repository) namedPortIndex() map[NumericIdentity]map[string][]NamedPort {
	out := map[NumericIdentity]map[string][]NamedPort{}
	add := func(id NumericIdentity, np NamedPort) {
		m := out[id]
		if m == nil {
			m = map[string][]NamedPort{}
			out[id] = m
		}
		if !slices.Contains(m[np.Name], np) {
			m[np.Name] = append(m[np.Name], np)
		}
	}
	for _, e := range r.endpoints {
		for _, np := range e.ep.NamedPorts {
			np.Name = strings.ToLower(np.Name)
			add(e.ident.ID, np)
			add(IdentityAny, np)
		}
	}
	return out
}

// Resolve returns the current policy of an endpoint (Snapshot().Endpoint).
func (r *Repository) Resolve(endpointID uint64) (*EndpointPolicy, bool) {
	return r.Snapshot().Endpoint(endpointID)
}

// Snapshot is an immutable, resolved view of a Repository.
type Snapshot struct {
	Revision   uint64
	endpoints  map[uint64]*EndpointPolicy
	identities map[NumericIdentity]*Identity
	byLabels   map[string]*Identity
	cidrs      []*Identity // CIDR identities, longest prefix first
	fqdns      []*FQDNMatcher
}

// Endpoint returns the policy of endpoint id.
func (s *Snapshot) Endpoint(id uint64) (*EndpointPolicy, bool) {
	p, ok := s.endpoints[id]
	return p, ok
}

// Endpoints returns every endpoint policy sorted by endpoint ID.
func (s *Snapshot) Endpoints() []*EndpointPolicy {
	out := make([]*EndpointPolicy, 0, len(s.endpoints))
	for _, p := range s.endpoints {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].EndpointID < out[j].EndpointID })
	return out
}

// Identity returns a known identity.
func (s *Snapshot) Identity(id NumericIdentity) (*Identity, bool) {
	i, ok := s.identities[id]
	return i, ok
}

// Identities returns every identity known to the policy (reserved,
// endpoints, CIDR and FQDN) sorted by number: the ipcache's label view.
func (s *Snapshot) Identities() []*Identity {
	out := make([]*Identity, 0, len(s.identities))
	for _, i := range s.identities {
		out = append(out, i)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// IdentityOfLabels returns the identity with exactly these labels.
func (s *Snapshot) IdentityOfLabels(ls Labels) (*Identity, bool) {
	i, ok := s.byLabels[ls.String()]
	return i, ok
}

// IdentityForIP returns the identity of an address outside the cluster:
// the CIDR identity of the longest policy prefix containing it, otherwise
// world.
func (s *Snapshot) IdentityForIP(a netip.Addr) NumericIdentity {
	a = a.Unmap()
	for _, c := range s.cidrs {
		if c.Prefix.Contains(a) {
			return c.ID
		}
	}
	return IdentityWorld
}

// CIDRIdentities returns the CIDR identities (prefix -> identity) the
// ipcache needs, longest prefix first.
func (s *Snapshot) CIDRIdentities() []*Identity { return slices.Clone(s.cidrs) }

// FQDNSelectors returns the distinct toFQDNs selectors of all policies,
// compiled. The DNS proxy labels every IP it learns for a matching name
// with FQDNLabels and registers the identity with UpsertIdentity.
func (s *Snapshot) FQDNSelectors() []*FQDNMatcher { return s.fqdns }

// AllocateFQDN returns the node-local identity of an IP selected by the
// given toFQDNs selectors (their FQDNSelector.String form, as
// filters/dns.SelectorLabel produces them): labels reserved:world and
// fqdn:<selector> for each. The same set always returns the same identity
// and the identity is known to selectors at the next Snapshot. It satisfies
// filters/dns.IdentityAllocator, so FQDN and CIDR identities come from one
// range without collisions. ReleaseFQDN frees it.
func (r *Repository) AllocateFQDN(selectors []string) (uint32, error) {
	if len(selectors) == 0 {
		return 0, fmt.Errorf("allocate fqdn identity: no selectors")
	}
	ls := FQDNSelectorLabels(selectors)
	r.mu.Lock()
	defer r.mu.Unlock()
	if ident, ok := r.alloc.LookupLabels(ls); ok && r.idRefs[ident.ID] > 0 && r.fqdnIDs[ident.ID] {
		return uint32(ident.ID), nil
	}
	ident, _, err := r.alloc.Allocate(ls)
	if err != nil {
		return 0, fmt.Errorf("allocate fqdn identity: %w", err)
	}
	if r.fqdnIDs == nil {
		r.fqdnIDs = map[NumericIdentity]bool{}
	}
	r.fqdnIDs[ident.ID] = true
	r.addIdentity(ident)
	return uint32(ident.ID), nil
}

// ReleaseFQDN frees an identity returned by AllocateFQDN (when no IP uses
// it any more).
func (r *Repository) ReleaseFQDN(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	nid := NumericIdentity(id)
	if !r.fqdnIDs[nid] {
		return
	}
	delete(r.fqdnIDs, nid)
	r.removeIdentityRef(nid)
	r.alloc.Release(nid)
}
