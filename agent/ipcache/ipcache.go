// Package ipcache is the one writer of the datapath's ipcache (the BPF
// prefix → identity map): several owners claim prefixes, and the map holds,
// for each prefix, the identity of its highest-precedence claim.
//
// Owners, highest precedence first (as Cilium's ipcache resource sources,
// where the endpoint's own source outranks policy-derived CIDRs, which
// outrank FQDN-derived entries):
//
//   - Endpoint: the addresses of workloads, from the endpoint source;
//   - CIDR: the prefixes of toCIDR/fromCIDR/toCIDRSet rules, from the policy
//     repository;
//   - FQDN: the IPs the DNS proxy learnt from allowed answers (toFQDNs).
//
// Invariants:
//   - an owner only ever adds, changes or removes its own claims: a DNS
//     answer naming a pod's IP (or a /32 a CIDR rule already maps) never
//     changes that entry, and the answer's expiry never deletes it;
//   - the map entry of a prefix is the identity of its highest-precedence
//     claim; removing that claim falls back to the next one, and removing the
//     last claim deletes the entry;
//   - writes reach the Writer in the order the decisions were taken (one
//     lock serialises them; a BPF map update is a non-blocking syscall, and
//     nothing else — no channel send, no callback — happens under it);
//   - a failed write is retried by the next Sync or Resync; until then the
//     map may differ from the claims for that prefix only;
//   - prefixes are normalised (masked, IPv4-mapped IPv6 unmapped), so
//     10.0.0.1/32 and ::ffff:10.0.0.1/128 are one prefix.
//
// The agent's calls in order:
//
//  1. t := ipcache.New(dp.IPCache()) once at start (the *redirect.IPCache
//     satisfies Writer);
//  2. on restart over pinned maps, t.Adopt(entries the map still holds), so
//     what the previous run wrote is known and can be pruned;
//  3. on each published snapshot, t.Owner(ipcache.Endpoint).Sync(every
//     endpoint address → its identity), then t.Owner(ipcache.CIDR).Sync(every
//     CIDR prefix of the snapshot → its identity) — before the policy maps
//     that name those identities are written. A prefix a deleted toCIDR rule
//     no longer names is then deleted (or falls back to a lower claim);
//  4. the DNS proxy gets t.Owner(ipcache.FQDN) as its dns.IPCache: it
//     upserts and deletes FQDN claims as answers arrive and expire;
//  5. once the DNS proxy has restored and reconciled its state, t.Prune()
//     deletes the adopted entries no owner claimed;
//  6. after a failed write (an error from Sync, Upsert or Delete),
//     t.Resync() rewrites every prefix whose entry differs from its claims.
package ipcache

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Writer is the datapath map the table writes: Upsert maps a prefix to an
// identity (replacing any previous one), Delete removes it (a missing prefix
// is not an error). *redirect.IPCache satisfies it.
type Writer interface {
	Upsert(prefix netip.Prefix, identity uint32) error
	Delete(prefix netip.Prefix) error
}

// Owner is a source of ipcache claims. A higher value has precedence.
type Owner uint8

// The owners, lowest precedence first.
const (
	// FQDN claims come from the DNS proxy (IPs of allowed answers).
	FQDN Owner = iota + 1
	// CIDR claims come from policy (toCIDR, fromCIDR, toCIDRSet prefixes).
	CIDR
	// Endpoint claims are workload addresses.
	Endpoint

	numOwners = int(Endpoint) + 1
)

// String returns the owner's name.
func (o Owner) String() string {
	switch o {
	case FQDN:
		return "fqdn"
	case CIDR:
		return "cidr"
	case Endpoint:
		return "endpoint"
	}
	return fmt.Sprintf("owner(%d)", uint8(o))
}

func (o Owner) valid() bool { return o >= FQDN && o <= Endpoint }

// claims holds each owner's identity for one prefix; 0 means no claim.
type claims [numOwners]uint32

// effective returns the identity and owner of the highest-precedence claim.
func (c *claims) effective() (uint32, Owner) {
	for o := Endpoint; o >= FQDN; o-- {
		if c[o] != 0 {
			return c[o], o
		}
	}
	return 0, 0
}

func (c *claims) empty() bool {
	id, _ := c.effective()
	return id == 0
}

// Table is the owner table over one Writer. Safe for concurrent use.
type Table struct {
	w Writer

	// mu guards every field below and is held across Writer calls so that
	// the map sees the decisions in the order they were taken.
	mu      sync.Mutex
	claims  map[netip.Prefix]*claims
	written map[netip.Prefix]uint32 // what the Writer holds, as far as we know
	failed  map[netip.Prefix]struct{}
	byOwner [numOwners]map[netip.Prefix]struct{}
}

// New returns an empty table writing into w. It writes nothing until an
// owner claims a prefix.
func New(w Writer) *Table {
	t := &Table{
		w:       w,
		claims:  make(map[netip.Prefix]*claims),
		written: make(map[netip.Prefix]uint32),
		failed:  make(map[netip.Prefix]struct{}),
	}
	for o := range t.byOwner {
		t.byOwner[o] = make(map[netip.Prefix]struct{})
	}
	return t
}

// normalise masks p and unmaps an IPv4-mapped IPv6 prefix.
func normalise(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("invalid prefix %v", p)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("prefix %v: IPv4-mapped prefix shorter than /96", p)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// set records o's claim (identity 0 removes it). Callers hold t.mu.
func (t *Table) set(o Owner, p netip.Prefix, id uint32) {
	c := t.claims[p]
	if c == nil {
		if id == 0 {
			return
		}
		c = new(claims)
		t.claims[p] = c
	}
	c[o] = id
	if id == 0 {
		delete(t.byOwner[o], p)
		if c.empty() {
			delete(t.claims, p)
		}
		return
	}
	t.byOwner[o][p] = struct{}{}
}

// flush writes p's effective entry if it differs from what the Writer
// holds. Callers hold t.mu.
func (t *Table) flush(p netip.Prefix) error {
	var want uint32
	if c := t.claims[p]; c != nil {
		want, _ = c.effective()
	}
	have, known := t.written[p]
	_, failed := t.failed[p]
	if !failed && (known && have == want || !known && want == 0) {
		return nil
	}
	if want == 0 {
		if err := t.w.Delete(p); err != nil {
			t.failed[p] = struct{}{}
			return fmt.Errorf("ipcache delete %s: %w", p, err)
		}
		delete(t.written, p)
	} else {
		if err := t.w.Upsert(p, want); err != nil {
			t.failed[p] = struct{}{}
			return fmt.Errorf("ipcache upsert %s identity %d: %w", p, want, err)
		}
		t.written[p] = want
	}
	delete(t.failed, p)
	return nil
}

// Handle is one owner's view of the table: it upserts and deletes only that
// owner's claims. It satisfies filters/dns.IPCache. Safe for concurrent use.
type Handle struct {
	t *Table
	o Owner
}

// Owner returns o's handle. It panics if o is not one of the declared
// owners (a programming error, never input).
func (t *Table) Owner(o Owner) Handle {
	if !o.valid() {
		panic(fmt.Sprintf("ipcache: unknown owner %d", o))
	}
	return Handle{t: t, o: o}
}

// Upsert claims prefix for the handle's owner with identity (non-zero) and
// writes the map entry if this claim is now the effective one. When a
// higher-precedence owner claims prefix, the map does not change.
func (h Handle) Upsert(prefix netip.Prefix, identity uint32) error {
	p, err := normalise(prefix)
	if err != nil {
		return fmt.Errorf("ipcache %s upsert: %w", h.o, err)
	}
	if identity == 0 {
		return fmt.Errorf("ipcache %s upsert %s: identity 0 is not valid", h.o, p)
	}
	h.t.mu.Lock()
	defer h.t.mu.Unlock()
	h.t.set(h.o, p, identity)
	return h.t.flush(p)
}

// Delete withdraws the owner's claim on prefix: the map entry falls back to
// the next claim, or is deleted when none is left. Deleting a claim the
// owner does not hold changes nothing.
func (h Handle) Delete(prefix netip.Prefix) error {
	p, err := normalise(prefix)
	if err != nil {
		return fmt.Errorf("ipcache %s delete: %w", h.o, err)
	}
	h.t.mu.Lock()
	defer h.t.mu.Unlock()
	if c := h.t.claims[p]; c == nil || c[h.o] == 0 {
		return nil
	}
	h.t.set(h.o, p, 0)
	return h.t.flush(p)
}

// Sync makes the owner's claims exactly desired: claims not in desired are
// withdrawn, the others added or changed, and the map entries that change
// are written. Entries whose earlier write failed are retried too. Every
// failure is reported (joined); the claims are recorded either way, so a
// later Resync retries the writes. An invalid prefix or identity 0 in
// desired is reported and skipped.
func (h Handle) Sync(desired map[netip.Prefix]uint32) error {
	var errs []error
	want := make(map[netip.Prefix]uint32, len(desired))
	for p, id := range desired {
		np, err := normalise(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("ipcache %s sync: %w", h.o, err))
			continue
		}
		if id == 0 {
			errs = append(errs, fmt.Errorf("ipcache %s sync %s: identity 0 is not valid", h.o, np))
			continue
		}
		want[np] = id
	}
	t := h.t
	t.mu.Lock()
	defer t.mu.Unlock()
	touched := make(map[netip.Prefix]struct{})
	for p := range t.byOwner[h.o] {
		if _, ok := want[p]; !ok {
			t.set(h.o, p, 0)
			touched[p] = struct{}{}
		}
	}
	for p, id := range want {
		if c := t.claims[p]; c == nil || c[h.o] != id {
			t.set(h.o, p, id)
			touched[p] = struct{}{}
		}
	}
	for p := range t.failed {
		touched[p] = struct{}{}
	}
	for p := range touched {
		if err := t.flush(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Claims returns a copy of the owner's claims.
func (h Handle) Claims() map[netip.Prefix]uint32 {
	h.t.mu.Lock()
	defer h.t.mu.Unlock()
	out := make(map[netip.Prefix]uint32, len(h.t.byOwner[h.o]))
	for p := range h.t.byOwner[h.o] {
		out[p] = h.t.claims[p][h.o]
	}
	return out
}

// Adopt records entries the Writer already holds (a pinned map that
// outlived the previous agent) without claiming them: they stay as they are
// until an owner claims them (rewritten if the identity differs) or Prune
// deletes the unclaimed ones.
func (t *Table) Adopt(entries map[netip.Prefix]uint32) error {
	var errs []error
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, id := range entries {
		np, err := normalise(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("ipcache adopt: %w", err))
			continue
		}
		if _, ok := t.written[np]; !ok && id != 0 {
			t.written[np] = id
		}
	}
	return errors.Join(errs...)
}

// Prune deletes the map entries no owner claims (adopted ones, and those
// whose delete failed).
func (t *Table) Prune() error {
	var errs []error
	t.mu.Lock()
	defer t.mu.Unlock()
	for p := range t.written {
		if t.claims[p] == nil {
			if err := t.flush(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Failed reports whether the last write of some entry failed: until a
// Sync or Resync rewrites it, the map differs from the claims there.
func (t *Table) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.failed) > 0
}

// Resync rewrites every entry whose last write failed.
func (t *Table) Resync() error {
	var errs []error
	t.mu.Lock()
	defer t.mu.Unlock()
	for p := range t.failed {
		if err := t.flush(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Entry is one prefix's effective claim.
type Entry struct {
	Prefix   netip.Prefix
	Identity uint32
	Owner    Owner
}

// Get returns prefix's effective claim.
func (t *Table) Get(prefix netip.Prefix) (Entry, bool) {
	p, err := normalise(prefix)
	if err != nil {
		return Entry{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.claims[p]
	if c == nil {
		return Entry{}, false
	}
	id, o := c.effective()
	return Entry{Prefix: p, Identity: id, Owner: o}, true
}

// Lookup returns the effective claim of the longest claimed prefix holding
// addr, as the datapath's LPM lookup resolves it (false: WORLD).
func (t *Table) Lookup(addr netip.Addr) (Entry, bool) {
	if !addr.IsValid() {
		return Entry{}, false
	}
	addr = addr.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	for bits := addr.BitLen(); bits >= 0; bits-- {
		p := netip.PrefixFrom(addr, bits).Masked()
		if c := t.claims[p]; c != nil {
			id, o := c.effective()
			return Entry{Prefix: p, Identity: id, Owner: o}, true
		}
	}
	return Entry{}, false
}

// Entries returns every claimed prefix's effective claim, sorted by prefix
// (for `ward status` and debugging).
func (t *Table) Entries() []Entry {
	t.mu.Lock()
	out := make([]Entry, 0, len(t.claims))
	for p, c := range t.claims {
		id, o := c.effective()
		out = append(out, Entry{Prefix: p, Identity: id, Owner: o})
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b Entry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

// Len returns the number of claimed prefixes.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.claims)
}
