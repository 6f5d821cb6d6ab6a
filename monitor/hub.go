// Package monitor is wardd's one flow stream: every producer's flow records
// (the DNS proxy in the agent, the in-Envoy filters over the flow socket)
// enter a Hub, which describes their endpoints with what the agent knows
// (names, namespaces, labels, identities), converts them to Hubble's flow
// messages (github.com/cilium/cilium/api/v1/flow) and keeps a bounded ring
// of the recent ones. The Observer gRPC service (Server) answers the real
// `hubble observe` CLI from the ring, and follows it.
//
// Nothing here blocks a producer for longer than a mutex held to append
// one flow: followers read the ring at their own pace and lose what the
// ring overwrote (counted).
package monitor

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/wardproxy/ward/flow"
)

// DefaultCapacity is the default ring size (Cilium's hubble-event-buffer-
// capacity default is 4095).
const DefaultCapacity = 4095

// EndpointInfo is what the agent knows about one side of a flow.
type EndpointInfo struct {
	ID        uint64
	Identity  uint32
	Namespace string
	PodName   string
	// Labels are in Cilium's source:key=value form (k8s:app=deathstar,
	// reserved:world).
	Labels []string
}

// Describer tells who owns an address. identity is the one the producer
// saw (0 when it did not know).
type Describer interface {
	Describe(ip netip.Addr, identity uint32) EndpointInfo
}

// Hub is a flow.Sink keeping the recent flows.
type Hub struct {
	node  string
	desc  Describer
	log   *slog.Logger
	start time.Time
	// OnRecord, when set before the first Emit, sees every record (the
	// metrics). It must not keep r.
	onRecord func(*flow.Record)

	mu     sync.Mutex
	ring   []*flowpb.Flow
	seq    uint64        // flows appended so far; flow i is ring[i%len(ring)]
	notify chan struct{} // closed and replaced on each append

	lost atomic.Uint64 // records producers dropped (reported by them)
}

// NewHub returns a Hub of capacity flows (DefaultCapacity when ≤ 0) for
// node. desc may be nil (flows keep what their producer recorded).
func NewHub(node string, capacity int, desc Describer, log *slog.Logger) *Hub {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	if log == nil {
		log = slog.Default()
	}
	return &Hub{node: node, desc: desc, log: log, start: time.Now(), ring: make([]*flowpb.Flow, capacity), notify: make(chan struct{})}
}

// OnRecord sets a function that sees every record emitted (before any
// Emit).
func (h *Hub) OnRecord(f func(*flow.Record)) { h.onRecord = f }

// Emit implements flow.Sink.
func (h *Hub) Emit(r *flow.Record) {
	if r == nil {
		return
	}
	if h.onRecord != nil {
		h.onRecord(r)
	}
	f := Convert(r, h.node, h.desc)
	h.mu.Lock()
	h.ring[h.seq%uint64(len(h.ring))] = f
	h.seq++
	close(h.notify)
	h.notify = make(chan struct{})
	h.mu.Unlock()
}

// AddLost counts records a producer dropped before they reached the Hub.
func (h *Hub) AddLost(n uint64) { h.lost.Add(n) }

// Lost returns the records producers reported dropped.
func (h *Hub) Lost() uint64 { return h.lost.Load() }

// Seen returns how many flows entered the Hub.
func (h *Hub) Seen() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// Capacity is the ring size.
func (h *Hub) Capacity() int { return len(h.ring) }

// window returns the sequence range [lo, hi) the ring holds and the channel
// closed at the next append.
func (h *Hub) window() (lo, hi uint64, next <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hi = h.seq
	if hi > uint64(len(h.ring)) {
		lo = hi - uint64(len(h.ring))
	}
	return lo, hi, h.notify
}

// at returns flow seq, or nil when the ring overwrote it.
func (h *Hub) at(seq uint64) *flowpb.Flow {
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq >= h.seq || h.seq-seq > uint64(len(h.ring)) {
		return nil
	}
	return h.ring[seq%uint64(len(h.ring))]
}
