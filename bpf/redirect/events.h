// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Flow events shared by the tc datapath (redirect.c) and the socket-level
// hooks (sock.c): the record, the ring buffer, the lost counter and the
// drop events' rate limit. wardd loads the socket-level object with the tc
// object's maps (MapReplacements), so both write one ring that one reader
// drains.

#ifndef WARD_EVENTS_H
#define WARD_EVENTS_H

#ifndef NSEC
#define NSEC 1000000000ULL
#endif

// Flow events (issue 16).
//
// Compact records for wardd's flow stream, through a ring buffer
// (events.go reads it): a drop event for a dropped packet, rate-limited to
// one per (source, destination, destination port, protocol, reason,
// direction) per DROP_EVENT_INTERVAL (the rest are only counted in
// ward_metrics), and one policy-verdict event per new conntrack entry and
// enforced direction (allowed, redirected to a proxy, or audited: a
// would-be drop let through by the endpoint's audit mode). Established
// packets emit nothing. A full ring never blocks: the event is counted in
// ward_events_lost and dropped. events_enabled (set at load) compiles them
// out entirely. The layout is mirrored in events.go.
#define EV_DROP 1
#define EV_VERDICT 2
#define DROP_EVENT_INTERVAL NSEC

struct flow_event {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport; // network order
	__u16 dport; // network order
	__u32 src_identity; // 0: not known here (the reader resolves it)
	__u32 dst_identity;
	__u32 ep_id;      // the endpoint whose policy decided (0: none)
	__u32 ifindex;
	__u16 proxy_port; // host order, redirects
	__u8 type;        // EV_*
	__u8 reason;      // enum reason
	__u8 verdict;     // VERDICT_* (drops: VERDICT_DENY)
	__u8 audit;       // 1: the policy would have dropped it (audit mode)
	__u8 dir;         // DIR_*
	__u8 family;
	__u8 proto;
	__u8 pad[3];
};

// The drop events' rate limit: a per-CPU table of DROP_RL_SLOTS slots
// indexed by a hash of (source, destination, destination port, protocol,
// reason, direction, interface); a slot remembers the last key hashed to
// it and when it was reported. Two keys sharing a slot only report more
// often. Two array accesses and a few multiplications per drop, where an
// LRU hash map's update cost ~4x more (bench/bpf/events.sh).
#define DROP_RL_SLOTS 4096

struct drop_rl_slot {
	__u64 last; // bpf_ktime_get_coarse_ns of the last report
	__u32 hash;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} ward_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} ward_events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct drop_rl_slot);
	__uint(max_entries, DROP_RL_SLOTS);
} ward_drop_rl SEC(".maps");

static __always_inline __u32 mix32(__u32 h, __u32 v)
{
	h ^= v;
	h *= 0x9e3779b1;
	return h ^ (h >> 15);
}

volatile const __u8 events_enabled = 1;

// Keeps struct flow_event in the BTF that bpf2go reads.
const struct flow_event *unused_flow_event __attribute__((unused));


// ev_output writes an event to the ring; a full ring never blocks: the
// event is counted in ward_events_lost and dropped.
static __always_inline void ev_output(const struct flow_event *e)
{
	if (bpf_ringbuf_output(&ward_events, (void *)e, sizeof(*e), 0) < 0) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&ward_events_lost, &zero);
		if (lost)
			*lost += 1;
	}
}

// drop_rl_pass reports whether a drop event keyed by hash h is due (its
// slot last reported another key, or DROP_EVENT_INTERVAL ago), and marks
// it reported.
static __always_inline int drop_rl_pass(__u32 h)
{
	__u32 idx = h & (DROP_RL_SLOTS - 1);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct drop_rl_slot *sl = bpf_map_lookup_elem(&ward_drop_rl, &idx);
	if (sl && sl->hash == h && now - sl->last < DROP_EVENT_INTERVAL)
		return 0;
	if (sl) {
		sl->hash = h;
		sl->last = now;
	}
	return 1;
}

#endif
