package ipcache

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeMap is the datapath map: it records every write and can fail writes
// of chosen prefixes.
type fakeMap struct {
	mu     sync.Mutex
	m      map[netip.Prefix]uint32
	ops    []string
	failOn map[netip.Prefix]bool
}

func newFakeMap() *fakeMap {
	return &fakeMap{m: map[netip.Prefix]uint32{}, failOn: map[netip.Prefix]bool{}}
}

func (f *fakeMap) Upsert(p netip.Prefix, id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failOn[p] {
		return errors.New("map full")
	}
	f.ops = append(f.ops, fmt.Sprintf("upsert %s %d", p, id))
	f.m[p] = id
	return nil
}

func (f *fakeMap) Delete(p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failOn[p] {
		return errors.New("map busy")
	}
	f.ops = append(f.ops, fmt.Sprintf("delete %s", p))
	delete(f.m, p)
	return nil
}

func (f *fakeMap) snapshot() map[netip.Prefix]uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.m)
}

func (f *fakeMap) takeOps() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ops := f.ops
	f.ops = nil
	return ops
}

var (
	podIP  = netip.MustParsePrefix("10.0.1.5/32")
	podIP2 = netip.MustParsePrefix("10.0.1.6/32")
	cidr   = netip.MustParsePrefix("192.0.2.0/24")
	cidr32 = netip.MustParsePrefix("192.0.2.7/32")
)

const (
	podID  = 1000
	cidrID = 16777217
	fqdnID = 16777300
)

// step is one owner's write: an upsert of id, or a delete.
type step struct {
	o  Owner
	up bool
	id uint32
}

func up(o Owner, id uint32) step { return step{o: o, up: true, id: id} }
func del(o Owner) step           { return step{o: o} }

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name    string
		steps   []step
		want    uint32 // 0: no entry
		wantOps []string
	}{
		{
			name:    "fqdn after endpoint does not overwrite",
			steps:   []step{up(Endpoint, podID), up(FQDN, fqdnID)},
			want:    podID,
			wantOps: []string{"upsert 10.0.1.5/32 1000"},
		},
		{
			name:    "fqdn expiry does not delete endpoint",
			steps:   []step{up(Endpoint, podID), up(FQDN, fqdnID), del(FQDN)},
			want:    podID,
			wantOps: []string{"upsert 10.0.1.5/32 1000"},
		},
		{
			name:    "endpoint after fqdn takes over",
			steps:   []step{up(FQDN, fqdnID), up(Endpoint, podID)},
			want:    podID,
			wantOps: []string{"upsert 10.0.1.5/32 16777300", "upsert 10.0.1.5/32 1000"},
		},
		{
			name:    "endpoint delete falls back to fqdn",
			steps:   []step{up(FQDN, fqdnID), up(Endpoint, podID), del(Endpoint)},
			want:    fqdnID,
			wantOps: []string{"upsert 10.0.1.5/32 16777300", "upsert 10.0.1.5/32 1000", "upsert 10.0.1.5/32 16777300"},
		},
		{
			name:    "cidr outranks fqdn",
			steps:   []step{up(CIDR, cidrID), up(FQDN, fqdnID), del(FQDN)},
			want:    cidrID,
			wantOps: []string{"upsert 10.0.1.5/32 16777217"},
		},
		{
			name:    "endpoint outranks cidr, cidr delete keeps endpoint",
			steps:   []step{up(Endpoint, podID), up(CIDR, cidrID), del(CIDR)},
			want:    podID,
			wantOps: []string{"upsert 10.0.1.5/32 1000"},
		},
		{
			name:    "last claim deleted deletes the entry",
			steps:   []step{up(CIDR, cidrID), up(FQDN, fqdnID), del(CIDR), del(FQDN)},
			want:    0,
			wantOps: []string{"upsert 10.0.1.5/32 16777217", "upsert 10.0.1.5/32 16777300", "delete 10.0.1.5/32"},
		},
		{
			name:  "delete of an unheld claim writes nothing",
			steps: []step{del(FQDN)},
			want:  0,
		},
		{
			name:    "same identity again writes nothing",
			steps:   []step{up(FQDN, fqdnID), up(FQDN, fqdnID)},
			want:    fqdnID,
			wantOps: []string{"upsert 10.0.1.5/32 16777300"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeMap()
			tab := New(f)
			for i, s := range tt.steps {
				var err error
				if s.up {
					err = tab.Owner(s.o).Upsert(podIP, s.id)
				} else {
					err = tab.Owner(s.o).Delete(podIP)
				}
				if err != nil {
					t.Fatalf("step %d (%s): %v", i, s.o, err)
				}
			}
			got, ok := f.snapshot()[podIP]
			if tt.want == 0 && ok || got != tt.want {
				t.Errorf("map[%s] = %d (present %v); want %d", podIP, got, ok, tt.want)
			}
			if diff := cmp.Diff(tt.wantOps, f.takeOps()); diff != "" {
				t.Errorf("writes (-want +got):\n%s", diff)
			}
			e, ok := tab.Lookup(podIP.Addr())
			if ok != (tt.want != 0) || e.Identity != tt.want {
				t.Errorf("Lookup(%s) = %+v, %v; want identity %d", podIP.Addr(), e, ok, tt.want)
			}
		})
	}
}

// TestSyncDeletesDroppedPrefix: the agent syncs the CIDR prefixes of each
// snapshot; a prefix a deleted toCIDR rule no longer names leaves the map
// (issue 11: nothing ever called IPCache.Delete), and one an FQDN answer
// also names falls back to the FQDN identity.
func TestSyncDeletesDroppedPrefix(t *testing.T) {
	f := newFakeMap()
	tab := New(f)
	cidrs := tab.Owner(CIDR)
	if err := tab.Owner(FQDN).Upsert(cidr32, fqdnID); err != nil {
		t.Fatal(err)
	}
	if err := cidrs.Sync(map[netip.Prefix]uint32{cidr: cidrID, cidr32: cidrID + 1}); err != nil {
		t.Fatal(err)
	}
	want := map[netip.Prefix]uint32{cidr: cidrID, cidr32: cidrID + 1}
	if diff := cmp.Diff(want, f.snapshot()); diff != "" {
		t.Fatalf("after first sync (-want +got):\n%s", diff)
	}
	if err := cidrs.Sync(nil); err != nil {
		t.Fatal(err)
	}
	want = map[netip.Prefix]uint32{cidr32: fqdnID}
	if diff := cmp.Diff(want, f.snapshot()); diff != "" {
		t.Errorf("after empty sync (-want +got):\n%s", diff)
	}
	if n := len(cidrs.Claims()); n != 0 {
		t.Errorf("CIDR claims = %d; want 0", n)
	}
}

func TestSyncOnlyTouchesOwnClaims(t *testing.T) {
	f := newFakeMap()
	tab := New(f)
	eps := tab.Owner(Endpoint)
	if err := eps.Sync(map[netip.Prefix]uint32{podIP: podID, podIP2: podID + 1}); err != nil {
		t.Fatal(err)
	}
	if err := tab.Owner(FQDN).Upsert(netip.MustParsePrefix("198.51.100.1/32"), fqdnID); err != nil {
		t.Fatal(err)
	}
	f.takeOps()
	// The second pod went away, the first got a new identity.
	if err := eps.Sync(map[netip.Prefix]uint32{podIP: podID + 5}); err != nil {
		t.Fatal(err)
	}
	ops := f.takeOps()
	slices.Sort(ops)
	if diff := cmp.Diff([]string{"delete 10.0.1.6/32", "upsert 10.0.1.5/32 1005"}, ops); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	want := map[netip.Prefix]uint32{podIP: podID + 5, netip.MustParsePrefix("198.51.100.1/32"): fqdnID}
	if diff := cmp.Diff(want, f.snapshot()); diff != "" {
		t.Errorf("map (-want +got):\n%s", diff)
	}
	// The same set again writes nothing.
	if err := eps.Sync(map[netip.Prefix]uint32{podIP: podID + 5}); err != nil {
		t.Fatal(err)
	}
	if ops := f.takeOps(); len(ops) != 0 {
		t.Errorf("idempotent sync wrote %v", ops)
	}
}

func TestNormalise(t *testing.T) {
	f := newFakeMap()
	tab := New(f)
	if err := tab.Owner(Endpoint).Upsert(netip.MustParsePrefix("::ffff:10.0.1.5/128"), podID); err != nil {
		t.Fatal(err)
	}
	if err := tab.Owner(FQDN).Upsert(podIP, fqdnID); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[netip.Prefix]uint32{podIP: podID}, f.snapshot()); diff != "" {
		t.Errorf("map (-want +got):\n%s", diff)
	}
	if err := tab.Owner(CIDR).Upsert(netip.MustParsePrefix("192.0.2.9/24"), cidrID); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.snapshot()[cidr]; !ok {
		t.Errorf("192.0.2.9/24 not written as %s", cidr)
	}
}

func TestInvalidInput(t *testing.T) {
	tab := New(newFakeMap())
	h := tab.Owner(FQDN)
	if err := h.Upsert(netip.Prefix{}, 5); err == nil {
		t.Error("Upsert(invalid prefix) = nil; want error")
	}
	if err := h.Upsert(podIP, 0); err == nil {
		t.Error("Upsert(identity 0) = nil; want error")
	}
	if err := h.Sync(map[netip.Prefix]uint32{podIP: 0, podIP2: 7}); err == nil {
		t.Error("Sync with identity 0 = nil; want error")
	}
	if e, ok := tab.Get(podIP2); !ok || e.Identity != 7 {
		t.Errorf("Get(%s) = %+v, %v; want the valid part of the sync applied", podIP2, e, ok)
	}
}

// TestFailedWriteRetried: a write that fails is reported, and the next
// Sync (or Resync) writes the entry the claims say.
func TestFailedWriteRetried(t *testing.T) {
	f := newFakeMap()
	tab := New(f)
	f.failOn[podIP] = true
	if err := tab.Owner(Endpoint).Upsert(podIP, podID); err == nil {
		t.Fatal("Upsert with a failing map = nil; want error")
	}
	f.failOn[podIP] = false
	if err := tab.Resync(); err != nil {
		t.Fatal(err)
	}
	if got := f.snapshot()[podIP]; got != podID {
		t.Errorf("after Resync map[%s] = %d; want %d", podIP, got, podID)
	}

	// A failed delete is retried by an unrelated owner's Sync.
	f.failOn[podIP] = true
	if err := tab.Owner(Endpoint).Delete(podIP); err == nil {
		t.Fatal("Delete with a failing map = nil; want error")
	}
	f.failOn[podIP] = false
	if err := tab.Owner(CIDR).Sync(nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.snapshot()[podIP]; ok {
		t.Errorf("after Sync the failed delete of %s was not retried", podIP)
	}
}

// TestAdoptPrune: entries a previous agent left in the pinned map stay until
// Prune, which deletes only the unclaimed ones.
func TestAdoptPrune(t *testing.T) {
	f := newFakeMap()
	stale := netip.MustParsePrefix("203.0.113.9/32")
	f.m[stale] = fqdnID
	f.m[podIP] = podID
	tab := New(f)
	if err := tab.Adopt(maps.Clone(f.m)); err != nil {
		t.Fatal(err)
	}
	if err := tab.Owner(Endpoint).Sync(map[netip.Prefix]uint32{podIP: podID}); err != nil {
		t.Fatal(err)
	}
	if ops := f.takeOps(); len(ops) != 0 {
		t.Errorf("sync of an adopted, unchanged entry wrote %v", ops)
	}
	if _, ok := f.snapshot()[stale]; !ok {
		t.Fatal("adopted entry deleted before Prune")
	}
	if err := tab.Prune(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[netip.Prefix]uint32{podIP: podID}, f.snapshot()); diff != "" {
		t.Errorf("after Prune (-want +got):\n%s", diff)
	}
}

func TestLookupLongestPrefix(t *testing.T) {
	tab := New(newFakeMap())
	if err := tab.Owner(CIDR).Sync(map[netip.Prefix]uint32{cidr: cidrID}); err != nil {
		t.Fatal(err)
	}
	if err := tab.Owner(FQDN).Upsert(cidr32, fqdnID); err != nil {
		t.Fatal(err)
	}
	wantEntries := []Entry{{Prefix: cidr, Identity: cidrID, Owner: CIDR}, {Prefix: cidr32, Identity: fqdnID, Owner: FQDN}}
	if diff := cmp.Diff(wantEntries, tab.Entries(), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("Entries (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		addr string
		want Entry
		ok   bool
	}{
		{addr: "192.0.2.7", want: Entry{Prefix: cidr32, Identity: fqdnID, Owner: FQDN}, ok: true},
		{addr: "192.0.2.8", want: Entry{Prefix: cidr, Identity: cidrID, Owner: CIDR}, ok: true},
		{addr: "::ffff:192.0.2.8", want: Entry{Prefix: cidr, Identity: cidrID, Owner: CIDR}, ok: true},
		{addr: "198.51.100.1"},
	} {
		got, ok := tab.Lookup(netip.MustParseAddr(tc.addr))
		if ok != tc.ok || got != tc.want {
			t.Errorf("Lookup(%s) = %+v, %v; want %+v, %v", tc.addr, got, ok, tc.want, tc.ok)
		}
	}
}

// TestConcurrentOwners: owners writing the same prefixes concurrently end
// with the map holding each prefix's highest claim (run with -race).
func TestConcurrentOwners(t *testing.T) {
	f := newFakeMap()
	tab := New(f)
	var prefixes []netip.Prefix
	for i := range 64 {
		prefixes = append(prefixes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 2, byte(i)}), 32))
	}
	var wg sync.WaitGroup
	for _, o := range []Owner{FQDN, CIDR, Endpoint} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := tab.Owner(o)
			for round := range 50 {
				for i, p := range prefixes {
					// Each owner ends claiming the even prefixes only.
					if (i+round)%2 == 0 || round == 49 && i%2 == 0 {
						if err := h.Upsert(p, uint32(o)*100); err != nil {
							t.Error(err)
						}
					} else if err := h.Delete(p); err != nil {
						t.Error(err)
					}
				}
			}
			if err := h.Sync(map[netip.Prefix]uint32{}); err != nil {
				t.Error(err)
			}
			if o != FQDN {
				return
			}
			want := map[netip.Prefix]uint32{}
			for i, p := range prefixes {
				if i%2 == 0 {
					want[p] = uint32(o) * 100
				}
			}
			if err := h.Sync(want); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	want := map[netip.Prefix]uint32{}
	for i, p := range prefixes {
		if i%2 == 0 {
			want[p] = uint32(FQDN) * 100
		}
	}
	if diff := cmp.Diff(want, f.snapshot()); diff != "" {
		t.Errorf("map (-want +got):\n%s", diff)
	}
}
