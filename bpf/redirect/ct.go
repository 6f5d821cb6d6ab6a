package redirect

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Conntrack lifetimes since a flow's last packet (mirrors of CT_LIFETIME_*
// in redirect.c; Cilium's defaults, --bpf-ct-timeout-regular-*).
const (
	CTLifetimeTCP   = 6 * time.Hour    // established TCP (a reply was seen)
	CTLifetimeSYN   = 60 * time.Second // TCP not answered yet
	CTLifetimeClose = 10 * time.Second // TCP after a FIN or RST
	CTLifetimeAny   = 60 * time.Second // UDP, ICMP echo

	// CTGCInterval is how often the agent should call GC.
	CTGCInterval = 30 * time.Second

	// Mirrors of the CT flags in redirect.c.
	ctSeenReply = 2
	ctClosing   = 4
)

func ctLifetime(k *datapathCtKey, v *datapathCtValue) time.Duration {
	switch {
	case k.Proto != ProtoTCP:
		return CTLifetimeAny
	case v.Flags&ctClosing != 0:
		return CTLifetimeClose
	case v.Flags&ctSeenReply == 0:
		return CTLifetimeSYN
	}
	return CTLifetimeTCP
}

// monotonicNow reads the datapath's clock: bpf_ktime_get_coarse_ns is
// CLOCK_MONOTONIC_COARSE (a few ms resolution, far cheaper per packet in
// a VM than bpf_ktime_get_ns).
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("read monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// GC deletes the conntrack entries whose lifetime has passed and returns
// how many it deleted. The datapath already ignores expired entries (their
// next packet is a new flow); GC frees their room. The agent calls it
// every CTGCInterval.
func (d *Datapath) GC() (int, error) {
	now, err := monotonicNow()
	if err != nil {
		return 0, fmt.Errorf("conntrack gc: %w", err)
	}
	return d.gcCT(now)
}

func (d *Datapath) gcCT(now uint64) (int, error) {
	var (
		k    datapathCtKey
		v    datapathCtValue
		dead []datapathCtKey
	)
	it := d.objs.WardCt.Iterate()
	for it.Next(&k, &v) {
		if now > v.LastSeen && time.Duration(now-v.LastSeen) > ctLifetime(&k, &v) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("conntrack gc: %w", err)
	}
	n := 0
	for i := range dead {
		if err := d.objs.WardCt.Delete(&dead[i]); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return n, fmt.Errorf("conntrack gc: %w", err)
		}
		n++
	}
	return n, nil
}
