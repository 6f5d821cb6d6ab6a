package dns

import (
	"context"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/agent/ipcache"
)

// The agent's owner table hands the proxy a Handle as its IPCache.
var _ IPCache = ipcache.Handle{}

// TestAnswerNamingClaimedIPs (issue 12 item 7): a DNS answer naming a pod's
// IP, or a /32 a CIDR rule maps, does not change that ipcache entry, and the
// answer's expiry does not delete it. The proxy writes through the agent's
// owner table as the FQDN owner, below the endpoint and CIDR owners.
func TestAnswerNamingClaimedIPs(t *testing.T) {
	up := startUpstream(t)
	mem := &MemIPCache{}
	tab := ipcache.New(mem)
	pod := netip.MustParseAddr("192.0.2.1")  // api.github.test's first IP
	cidr := netip.MustParseAddr("192.0.2.2") // its second
	free := netip.MustParseAddr("192.0.2.3") // support.github.test: no other claim
	const podID, cidrID = 1000, MinFQDNIdentity + 500
	if err := tab.Owner(ipcache.Endpoint).Upsert(netip.PrefixFrom(pod, 32), podID); err != nil {
		t.Fatal(err)
	}
	if err := tab.Owner(ipcache.CIDR).Sync(map[netip.Prefix]uint32{netip.PrefixFrom(cidr, 32): cidrID}); err != nil {
		t.Fatal(err)
	}
	h := startProxy(t, up, harnessOpts{rules: mediabot, sels: mediabot, ipc: tab.Owner(ipcache.FQDN)})
	for _, name := range []string{"api.github.test.", "support.github.test."} {
		if r := query(t, "udp", h.p.UDPAddr(), name, mdns.TypeA); r.Rcode != mdns.RcodeSuccess {
			t.Fatalf("%s rcode = %s; want NOERROR", name, mdns.RcodeToString[r.Rcode])
		}
	}
	check := func(when string, wantFree bool) {
		t.Helper()
		if id, ok := mem.Lookup(pod); !ok || id != podID {
			t.Errorf("%s: ipcache[%s] = %d, %v; want the endpoint's %d", when, pod, id, ok, podID)
		}
		if id, ok := mem.Lookup(cidr); !ok || id != cidrID {
			t.Errorf("%s: ipcache[%s] = %d, %v; want the CIDR's %d", when, cidr, id, ok, cidrID)
		}
		id, ok := mem.Lookup(free)
		if wantFree && (!ok || id < MinFQDNIdentity) {
			t.Errorf("%s: ipcache[%s] = %d, %v; want an FQDN identity", when, free, id, ok)
		}
		if !wantFree && ok {
			t.Errorf("%s: ipcache[%s] = %d; want no entry", when, free, id)
		}
	}
	check("after the answers", true)
	if e, ok := tab.Get(netip.PrefixFrom(pod, 32)); !ok || e.Owner != ipcache.Endpoint {
		t.Errorf("owner of %s = %+v, %v; want the endpoint", pod, e, ok)
	}

	// Expiry: stop the proxy (so nothing else collects), then collect as an
	// hour later. The FQDN claims go; the endpoint and CIDR entries stay.
	h.stop()
	h.p.upd.gc(context.Background(), time.Now().Add(time.Hour))
	if n := len(h.p.Cache().Entries()); n != 0 {
		t.Fatalf("cache has %d entries after expiry; want 0", n)
	}
	check("after expiry", false)
	if n := len(tab.Owner(ipcache.FQDN).Claims()); n != 0 {
		t.Errorf("FQDN claims after expiry = %d; want 0", n)
	}
}
