package dns

import (
	"sync/atomic"
	"time"
)

// Stats are the proxy's counters. All fields are safe for concurrent use.
type Stats struct {
	Queries        atomic.Uint64 // queries received (parsed or not)
	Allowed        atomic.Uint64 // queries forwarded
	Denied         atomic.Uint64 // queries answered REFUSED/NXDOMAIN by policy
	Malformed      atomic.Uint64 // queries dropped or answered FORMERR
	UpstreamErrors atomic.Uint64 // upstream failures and invalid answers (SERVFAIL or silence)
	Overload       atomic.Uint64 // queries refused because MaxInFlight was reached
	UpdateTimeouts atomic.Uint64 // answers released before their ipcache/policy update finished
	IPCacheUpserts atomic.Uint64 // ipcache entries written
	IPCacheErrors  atomic.Uint64 // ipcache, allocator or policy update failures
	TTLCapped      atomic.Uint64 // answers whose TTLs were cut to MaxTTL

	// The FQDN cache's evictions (Config's caps).
	NameEvictions   atomic.Uint64 // names evicted by MaxNamesPerEndpoint or MaxNames (their IPs became zombies)
	IPEvictions     atomic.Uint64 // IPs made zombies by MaxIPsPerName
	ZombieEvictions atomic.Uint64 // zombies dropped by MaxZombies or MaxIPsPerName while connections may use them

	// UpdateWait is the distribution of the time answers waited for their
	// ipcache and policy updates.
	UpdateWait Histogram
}

// Histogram is a lock-free latency histogram with power-of-two microsecond
// buckets (1 µs … ~1 s and an overflow bucket).
type Histogram struct {
	buckets [22]atomic.Uint64
}

// Observe adds one duration.
func (h *Histogram) Observe(d time.Duration) {
	us := uint64(d / time.Microsecond)
	i := 0
	for us > 0 && i < len(h.buckets)-1 {
		us >>= 1
		i++
	}
	h.buckets[i].Add(1)
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.buckets {
		n += h.buckets[i].Load()
	}
	return n
}

// Quantile returns an upper bound of the q-quantile (0 < q ≤ 1): the upper
// edge of the bucket holding it.
func (h *Histogram) Quantile(q float64) time.Duration {
	total := h.Count()
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	if rank == 0 {
		rank = 1
	}
	var n uint64
	for i := range h.buckets {
		n += h.buckets[i].Load()
		if n >= rank {
			return time.Duration(uint64(1)<<i) * time.Microsecond
		}
	}
	return time.Duration(uint64(1)<<(len(h.buckets)-1)) * time.Microsecond
}
