package dns

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	mdns "github.com/miekg/dns"
)

func ipN(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }

// liveNames returns endpoint ep's names with live IPs at now.
func liveNames(c *Cache, ep uint64, now time.Time) []string {
	var out []string
	seen := map[string]bool{}
	for _, e := range c.Entries() {
		if e.Endpoint == ep && !e.Zombie && e.Expires.After(now) && !seen[e.Name] {
			seen[e.Name] = true
			out = append(out, e.Name)
		}
	}
	return out
}

// TestNameCapsEvictLeastRecentlyLookedUp (issue 12 item 12): the names of
// an endpoint, and of the node, are capped; the least recently looked-up
// name is evicted (its IPs become zombies) and counted.
func TestNameCapsEvictLeastRecentlyLookedUp(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewCache(Config{MaxNamesPerEndpoint: 2, MaxNames: 3})
	c.Update(1, "a.test", []netip.Addr{ipN(1)}, time.Hour, now)
	c.Update(1, "b.test", []netip.Addr{ipN(2)}, time.Hour, now.Add(time.Second))
	c.Update(1, "a.test", []netip.Addr{ipN(1)}, time.Hour, now.Add(2*time.Second)) // a is now the most recent
	c.Update(1, "c.test", []netip.Addr{ipN(3)}, time.Hour, now.Add(3*time.Second)) // evicts b
	at := now.Add(4 * time.Second)
	if diff := cmp.Diff([]string{"a.test", "c.test"}, liveNames(c, 1, at)); diff != "" {
		t.Errorf("endpoint 1's live names (-want +got):\n%s", diff)
	}
	if got := c.Lookup(1, "b.test", at); len(got) != 0 {
		t.Errorf("Lookup(b.test) = %v; want nothing (evicted)", got)
	}
	if z := c.Zombies(); z != 1 {
		t.Errorf("zombies = %d; want 1 (b.test's IP, kept while a connection may use it)", z)
	}
	if n := c.Stats().NameEvictions.Load(); n != 1 {
		t.Errorf("NameEvictions = %d; want 1", n)
	}
	// The node cap: endpoint 2's two names push the node over 3; the
	// oldest pair on the node (endpoint 1's a.test, looked up at +2s)
	// goes.
	c.Update(2, "d.test", []netip.Addr{ipN(4)}, time.Hour, now.Add(5*time.Second))
	c.Update(2, "e.test", []netip.Addr{ipN(5)}, time.Hour, now.Add(6*time.Second))
	at = now.Add(7 * time.Second)
	if diff := cmp.Diff([]string{"c.test"}, liveNames(c, 1, at)); diff != "" {
		t.Errorf("endpoint 1's live names after the node cap (-want +got):\n%s", diff)
	}
	if n := c.Stats().NameEvictions.Load(); n != 2 {
		t.Errorf("NameEvictions = %d; want 2", n)
	}
	// An evicted name looked up again is live again.
	c.Update(1, "b.test", []netip.Addr{ipN(2)}, time.Hour, now.Add(8*time.Second))
	if got := c.Lookup(1, "b.test", now.Add(9*time.Second)); len(got) != 1 {
		t.Errorf("Lookup(b.test) after a new answer = %v; want its IP", got)
	}
}

// TestFreshNamesStayBounded: a pod resolving ever new names (cilium#47128)
// keeps at most MaxNamesPerEndpoint live names, and after a collection
// (no connection uses the evicted IPs) the cache and its state are that
// size.
func TestFreshNamesStayBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	const limit = 50
	c := NewCache(Config{MaxNamesPerEndpoint: limit})
	for i := range 5000 {
		c.Update(7, fmt.Sprintf("n%d.evil.test", i), []netip.Addr{ipN(i % 4000)}, time.Hour, now)
	}
	if n := len(liveNames(c, 7, now)); n != limit {
		t.Errorf("live names = %d; want %d", n, limit)
	}
	if n := c.Stats().NameEvictions.Load(); n != 5000-limit {
		t.Errorf("NameEvictions = %d; want %d", n, 5000-limit)
	}
	c.Expire(now) // nothing expired yet: the zombies are the evicted names
	c.Reap(nil)
	if n := len(c.Entries()); n != limit {
		t.Errorf("entries after collection = %d; want %d", n, limit)
	}
}

func TestTTLBounds(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewCache(Config{MinTTL: 10 * time.Second, MaxTTL: time.Minute})
	c.Update(1, "short.test", []netip.Addr{ipN(1)}, time.Second, now)
	c.Update(1, "long.test", []netip.Addr{ipN(2)}, 48*time.Hour, now)
	got := map[string]time.Duration{}
	for _, e := range c.Entries() {
		got[e.Name] = e.Expires.Sub(now)
	}
	want := map[string]time.Duration{"short.test": 10 * time.Second, "long.test": time.Minute}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("TTLs held (-want +got):\n%s", diff)
	}
	// The default maximum is a day.
	d := NewCache(Config{})
	d.Update(1, "long.test", []netip.Addr{ipN(2)}, 1<<31*time.Second, now)
	if ttl := d.Entries()[0].Expires.Sub(now); ttl != DefaultMaxTTL {
		t.Errorf("TTL with the default maximum = %v; want %v", ttl, DefaultMaxTTL)
	}
}

func TestEvictionCounters(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewCache(Config{MaxIPsPerName: 2, MaxZombies: 1})
	c.Update(1, "s3.test", []netip.Addr{ipN(1), ipN(2), ipN(3)}, time.Hour, now)
	if n := c.Stats().IPEvictions.Load(); n != 1 {
		t.Errorf("IPEvictions = %d; want 1", n)
	}
	zs := c.Expire(now.Add(2 * time.Hour))
	alive := map[ZombieRef]bool{}
	for _, z := range zs {
		alive[z] = true
	}
	c.Reap(alive) // three zombies in use, the cap keeps one
	if n := c.Stats().ZombieEvictions.Load(); n != 2 {
		t.Errorf("ZombieEvictions = %d; want 2", n)
	}
}

// TestRestoreHeldToCaps: a state file holds whatever a previous run (or
// someone else) wrote; restoring it keeps the caps.
func TestRestoreHeldToCaps(t *testing.T) {
	now := time.Now()
	var entries []CacheEntry
	for i := range 20 {
		entries = append(entries, CacheEntry{Endpoint: 1, Name: fmt.Sprintf("n%d.test", i), IP: ipN(i),
			Expires: now.Add(100 * 24 * time.Hour), Seen: now.Add(time.Duration(i) * time.Second)})
	}
	c := NewCache(Config{MaxNamesPerEndpoint: 5, MaxTTL: time.Hour})
	c.Restore(entries, now)
	live := liveNames(c, 1, now)
	if diff := cmp.Diff([]string{"n15.test", "n16.test", "n17.test", "n18.test", "n19.test"}, live); diff != "" {
		t.Errorf("live names after restore (-want +got):\n%s", diff)
	}
	for _, e := range c.Entries() {
		if e.Expires.After(now.Add(time.Hour)) {
			t.Errorf("%s restored expiring at %v; want at most MaxTTL from now", e.Name, e.Expires)
		}
	}
}

// TestMaxTTLCapsAnswer: the answer the client gets carries no TTL above
// MaxTTL, so it never caches the name longer than the cache keeps its IPs.
func TestMaxTTLCapsAnswer(t *testing.T) {
	up := startUpstream(t)
	for _, tc := range []struct {
		name     string
		maxTTL   time.Duration
		wantTTLs []uint32
		capped   uint64
	}{
		{name: "default keeps the TTLs", wantTTLs: []uint32{60, 30}},
		{name: "cut to 40s", maxTTL: 40 * time.Second, wantTTLs: []uint32{40, 30}, capped: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, up, harnessOpts{cfg: Config{MaxTTL: tc.maxTTL}, rules: mediabot, sels: mediabot})
			r := query(t, "udp", h.p.UDPAddr(), "api.github.test.", mdns.TypeA)
			var ttls []uint32
			for _, rr := range r.Answer {
				ttls = append(ttls, rr.Header().Ttl)
			}
			if diff := cmp.Diff(tc.wantTTLs, ttls); diff != "" {
				t.Errorf("answer TTLs (-want +got):\n%s", diff)
			}
			if n := h.p.Stats().TTLCapped.Load(); n != tc.capped {
				t.Errorf("TTLCapped = %d; want %d", n, tc.capped)
			}
			if got := answerIPs(r); len(got) != 2 {
				t.Errorf("answer IPs = %v; want both", got)
			}
		})
	}
}

var addrPortEq = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

func TestConfigJSON(t *testing.T) {
	in := `{"rejectResponseCode": "nameError", "minTTL": "1m", "maxTTL": "12h", "maxIPsPerHostname": 50,
		"maxDeferredConnectionDeletes": 100, "maxNamesPerEndpoint": 10, "maxNames": 20,
		"proxyResponseMaxDelay": "250ms", "concurrencyLimit": 8, "gcInterval": "5s", "forwardTimeout": "2s"}`
	c := Config{StateFile: "/run/ward/fqdn.json"}
	if err := json.Unmarshal([]byte(in), &c); err != nil {
		t.Fatal(err)
	}
	want := Config{StateFile: "/run/ward/fqdn.json", RejectNXDomain: true, MinTTL: time.Minute, MaxTTL: 12 * time.Hour,
		MaxIPsPerName: 50, MaxZombies: 100, MaxNamesPerEndpoint: 10, MaxNames: 20, UpdateTimeout: 250 * time.Millisecond,
		MaxInFlight: 8, GCInterval: 5 * time.Second, ForwardTimeout: 2 * time.Second}
	if diff := cmp.Diff(want, c, addrPortEq); diff != "" {
		t.Errorf("Unmarshal (-want +got):\n%s", diff)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back Config
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	want.StateFile = "" // not part of the JSON form
	if diff := cmp.Diff(want, back, addrPortEq); diff != "" {
		t.Errorf("round trip of %s (-want +got):\n%s", b, diff)
	}
	if b, _ := json.Marshal(Config{}); string(b) != "{}" {
		t.Errorf("Marshal(zero) = %s; want {} (every default)", b)
	}
	for _, bad := range []string{
		`{"rejectResponseCode": "nxdomain"}`,
		`{"minimumTTL": "1m"}`,
		`{"minTTL": 60}`,
		`{"minTTL": "sixty"}`,
		`{"stateFile": "/tmp/x"}`,
	} {
		var c Config
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("Unmarshal(%s) = nil; want an error", bad)
		} else if !strings.Contains(err.Error(), "dns config") && !strings.Contains(err.Error(), "duration") {
			t.Errorf("Unmarshal(%s) = %v; want it to name the dns config", bad, err)
		}
	}
	if err := (&Config{UDPAddr: ":0", Transparent: true, MinTTL: 2 * time.Hour, MaxTTL: time.Hour}).Validate(); err == nil {
		t.Error("Validate(MinTTL > MaxTTL) = nil; want an error")
	}
}
