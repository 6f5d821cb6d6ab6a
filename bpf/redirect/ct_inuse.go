package redirect

import (
	"fmt"
	"net/netip"
	"time"
)

// InUse reports whether the conntrack map holds a live (unexpired) flow
// between a and b, in either direction. The DNS proxy asks it before it
// forgets an expired FQDN IP: an IP a connection still uses stays (a
// zombie, as in Cilium) so the connection is not cut. It walks the map;
// callers ask per expired IP, not per packet.
func (d *Datapath) InUse(a, b netip.Addr) (bool, error) {
	now, err := monotonicNow()
	if err != nil {
		return false, err
	}
	fa, wa := addrWords(a)
	fb, wb := addrWords(b)
	if fa != fb {
		return false, nil
	}
	var k datapathCtKey
	var v datapathCtValue
	it := d.objs.WardCt.Iterate()
	for it.Next(&k, &v) {
		if k.Family != fa {
			continue
		}
		if !(k.Saddr == wa && k.Daddr == wb) && !(k.Saddr == wb && k.Daddr == wa) {
			continue
		}
		if now <= v.LastSeen || time.Duration(now-v.LastSeen) <= ctLifetime(&k, &v) {
			return true, nil
		}
	}
	if err := it.Err(); err != nil {
		return false, fmt.Errorf("conntrack: %w", err)
	}
	return false, nil
}
