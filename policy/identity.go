package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"sync"
)

// NumericIdentity is a security identity as carried in the datapath.
// 0 is not a valid identity; in policy entries it means "any identity".
type NumericIdentity uint32

// Reserved identities (Cilium's numbers).
const (
	IdentityAny           NumericIdentity = 0 // wildcard in policy entries
	IdentityHost          NumericIdentity = 1
	IdentityWorld         NumericIdentity = 2
	IdentityUnmanaged     NumericIdentity = 3
	IdentityHealth        NumericIdentity = 4
	IdentityInit          NumericIdentity = 5
	IdentityRemoteNode    NumericIdentity = 6
	IdentityKubeAPIServer NumericIdentity = 7
	IdentityIngress       NumericIdentity = 8
	IdentityWorldIPv4     NumericIdentity = 9
	IdentityWorldIPv6     NumericIdentity = 10
)

// Identity ranges.
const (
	// MinReserved..MaxReserved are reserved identities.
	MinReserved NumericIdentity = 1
	MaxReserved NumericIdentity = 255
	// MinCluster..MaxCluster are cluster-scoped identities of endpoints.
	MinCluster NumericIdentity = 256
	MaxCluster NumericIdentity = 1<<16 - 1
	// MinLocal..MaxLocal are node-local identities of CIDR and FQDN
	// label sets (2^24+1 .. 2^25-1).
	MinLocal NumericIdentity = 1<<24 + 1
	MaxLocal NumericIdentity = 1<<25 - 1
)

// IsLocal reports whether id is a node-local (CIDR/FQDN) identity.
func (id NumericIdentity) IsLocal() bool { return id >= MinLocal && id <= MaxLocal }

// IsReserved reports whether id is a reserved identity.
func (id NumericIdentity) IsReserved() bool { return id >= MinReserved && id <= MaxReserved }

func (id NumericIdentity) String() string {
	if n, ok := reservedNames[id]; ok {
		return n
	}
	return strconv.FormatUint(uint64(id), 10)
}

var reservedNames = map[NumericIdentity]string{
	IdentityAny: "any", IdentityHost: "host", IdentityWorld: "world",
	IdentityUnmanaged: "unmanaged", IdentityHealth: "health", IdentityInit: "init",
	IdentityRemoteNode: "remote-node", IdentityKubeAPIServer: "kube-apiserver",
	IdentityIngress: "ingress", IdentityWorldIPv4: "world-ipv4", IdentityWorldIPv6: "world-ipv6",
}

// ReservedIdentity returns the identity of a reserved name ("host", "world",
// ...) as used in the reserved: label source and in entities.
func ReservedIdentity(name string) (NumericIdentity, bool) {
	for id, n := range reservedNames {
		if n == name && id != IdentityAny {
			return id, true
		}
	}
	return 0, false
}

// Identity is a numeric identity with its labels. Identities are immutable.
type Identity struct {
	ID     NumericIdentity
	Labels Labels
	// Prefix is the CIDR of a CIDR identity (labels cidr:<prefix>), the
	// zero Prefix otherwise.
	Prefix netip.Prefix
	key    string // Labels.String()
}

// labelsKey returns Labels.String(), cached for allocated identities.
func (i *Identity) labelsKey() string {
	if i.key != "" {
		return i.key
	}
	return i.Labels.String()
}

func newIdentity(id NumericIdentity, ls Labels) *Identity {
	ident := &Identity{ID: id, Labels: ls, key: ls.String()}
	for _, l := range ls {
		if l.Source == SourceCIDR {
			if p, err := netip.ParsePrefix(l.Key); err == nil {
				ident.Prefix = p
			}
		}
	}
	return ident
}

func (i *Identity) isWorld() bool {
	switch i.ID {
	case IdentityWorld, IdentityWorldIPv4, IdentityWorldIPv6:
		return true
	}
	return i.ID.IsLocal() && (i.Labels.Has(SourceReserved, "world") ||
		i.Labels.Has(SourceReserved, "world-ipv4") || i.Labels.Has(SourceReserved, "world-ipv6"))
}

// Allocator hands out numeric identities for label sets: reserved label
// sets map to their reserved numbers; label sets with a cidr: or fqdn:
// label get node-local identities from MinLocal; everything else gets a
// cluster identity from MinCluster. The same labels always get the same
// identity while referenced. Safe for concurrent use.
type Allocator struct {
	mu          sync.Mutex
	byKey       map[string]*allocation
	byID        map[NumericIdentity]*allocation
	nextCluster NumericIdentity
	nextLocal   NumericIdentity
	version     uint64
}

type allocation struct {
	ident *Identity
	refs  int
}

// NewAllocator returns an allocator holding the reserved identities.
func NewAllocator() *Allocator {
	a := &Allocator{
		byKey:       make(map[string]*allocation),
		byID:        make(map[NumericIdentity]*allocation),
		nextCluster: MinCluster,
		nextLocal:   MinLocal,
	}
	for id, n := range reservedNames {
		if id == IdentityAny {
			continue
		}
		ls := NewLabels(Label{Source: SourceReserved, Key: n})
		al := &allocation{ident: newIdentity(id, ls), refs: 1}
		a.byKey[ls.String()] = al
		a.byID[id] = al
	}
	return a
}

// Allocate returns the identity of ls, allocating it (reference count 1)
// or taking another reference. isNew reports a fresh allocation.
func (a *Allocator) Allocate(ls Labels) (ident *Identity, isNew bool, err error) {
	key := ls.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if al, ok := a.byKey[key]; ok {
		al.refs++
		return al.ident, false, nil
	}
	local := false
	for _, l := range ls {
		if l.Source == SourceCIDR || l.Source == SourceFQDN {
			local = true
		}
	}
	var id NumericIdentity
	if local {
		id, err = a.next(&a.nextLocal, MinLocal, MaxLocal)
	} else {
		id, err = a.next(&a.nextCluster, MinCluster, MaxCluster)
	}
	if err != nil {
		return nil, false, err
	}
	al := &allocation{ident: newIdentity(id, ls), refs: 1}
	a.byKey[key] = al
	a.byID[id] = al
	a.version++
	return al.ident, true, nil
}

func (a *Allocator) next(cur *NumericIdentity, lo, hi NumericIdentity) (NumericIdentity, error) {
	for range hi - lo + 1 {
		id := *cur
		*cur++
		if *cur > hi {
			*cur = lo
		}
		if _, used := a.byID[id]; !used {
			return id, nil
		}
	}
	return 0, fmt.Errorf("identity range %d-%d exhausted", lo, hi)
}

// Release drops one reference to id; the identity is freed at zero.
// Reserved identities are never freed. It reports whether id was freed.
func (a *Allocator) Release(id NumericIdentity) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.byID[id]
	if !ok || id.IsReserved() {
		return false
	}
	al.refs--
	if al.refs > 0 {
		return false
	}
	delete(a.byID, id)
	delete(a.byKey, al.ident.labelsKey())
	a.version++
	return true
}

// Lookup returns the identity with number id.
func (a *Allocator) Lookup(id NumericIdentity) (*Identity, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.byID[id]
	if !ok {
		return nil, false
	}
	return al.ident, true
}

// LookupLabels returns the identity of ls if allocated.
func (a *Allocator) LookupLabels(ls Labels) (*Identity, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.byKey[ls.String()]
	if !ok {
		return nil, false
	}
	return al.ident, true
}

// All returns every allocated identity sorted by number.
func (a *Allocator) All() []*Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*Identity, 0, len(a.byID))
	for _, al := range a.byID {
		out = append(out, al.ident)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// CIDRLabels returns the labels of the node-local identity of prefix p:
// cidr:<p> and reserved:world.
func CIDRLabels(p netip.Prefix) Labels {
	return NewLabels(Label{Source: SourceCIDR, Key: p.Masked().String()}, Label{Source: SourceReserved, Key: "world"})
}
