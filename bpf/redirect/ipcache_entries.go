package redirect

import (
	"fmt"
	"net/netip"
)

// Entries returns every prefix the ipcache holds with its identity (the
// agent adopts them on restart over pinned maps, then prunes what no owner
// claims).
func (c *IPCache) Entries() (map[netip.Prefix]uint32, error) {
	out := map[netip.Prefix]uint32{}
	var k datapathIpcacheKey
	var v datapathIpcacheValue
	it := c.m.Iterate()
	for it.Next(&k, &v) {
		bits := int(k.Prefixlen) - 32
		a := wordsAddr(k.Family, k.Addr)
		p, err := a.Prefix(bits)
		if err != nil {
			return nil, fmt.Errorf("ipcache entries: key %+v: %w", k, err)
		}
		out[p] = v.Identity
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ipcache entries: %w", err)
	}
	return out, nil
}
