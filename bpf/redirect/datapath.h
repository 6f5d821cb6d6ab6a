// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Shared by ward's tc (redirect.c) and socket-level (sock.c) programs:
// constants, the maps both use (pinned by name, so both collections share
// one instance of each) and the policy lookup. Layouts are mirrored in Go.

#ifndef WARD_DATAPATH_H
#define WARD_DATAPATH_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET4 2
#define AF_INET6 10

// Verdicts (policy map values, CT entries).
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2
#define VERDICT_REDIRECT 3

// Directions in the policy key.
#define DIR_INGRESS 0
#define DIR_EGRESS 1

// Endpoint flags.
#define EP_ENFORCE_INGRESS 1
#define EP_ENFORCE_EGRESS 2
#define EP_LOCKDOWN 4
// EP_POLICY_GEN selects which of the endpoint's two policy generations is
// live: the writer fills the other generation, then flips this bit with one
// atomic endpoint-entry update, so a lookup never sees half a rewrite.
#define EP_POLICY_GEN 8
// EP_AUDIT is policy audit mode (Cilium's PolicyAuditMode): a packet the
// endpoint's policy would drop passes as allowed, and its new flow is
// reported with an audit verdict event (redirect.c, flow events). Lockdown
// and every non-policy drop still drop.
#define EP_AUDIT 16

// skb marks. MARK_TO_PROXY is set on redirected packets so that the host's
// policy routing rule (fwmark -> table with "local 0.0.0.0/0 dev lo")
// delivers them locally to the assigned socket; on a hairpinned packet
// (to_pod -> the veth's ingress) its upper 16 bits carry the proxy port. Proxies mark their upstream
// sockets the way Cilium's Envoy filters do: 0x0A00 ingress, 0x0B00 egress
// with the source identity packed as ((id & 0xFFFF) << 16) | ((id >> 16) & 0xFF).
#define MARK_MAGIC_MASK 0x0F00
#define MARK_TO_PROXY 0x0D00
#define MARK_PROXY_INGRESS 0x0A00
#define MARK_PROXY_EGRESS 0x0B00
// On an egress proxy's upstream: the proxy also applied the destination's
// ingress L7 rules when the destination is a local endpoint (ward.http's
// egress listeners do), so an ingress redirect verdict passes.
#define MARK_INGRESS_CHECKED 0x1000

#define IDENTITY_WORLD 2

// Reasons (index into the metrics map). Keep in sync with reasons.go.
enum reason {
	R_PASS_ALLOWED = 0,
	R_PASS_ESTABLISHED = 1,
	R_PASS_REPLY = 2,
	R_PASS_NOT_ENFORCED = 3,
	R_PASS_NON_IP = 4,
	R_REDIRECT = 5,
	R_PASS_PROXY = 6,
	R_DROP_POLICY = 7,
	R_DROP_LOCKDOWN = 8,
	R_DROP_NO_PROXY = 9,
	R_DROP_FRAGMENT = 10,
	R_DROP_MALFORMED = 11,
	R_DROP_SPOOFED = 12,
	R_DROP_UNSUPPORTED_L3 = 13,
	R_DROP_REDIRECT_UNSUPPORTED = 14,
	R_DROP_UNKNOWN_ENDPOINT = 15,
	R_SHORTCUT = 16, // socket-level: sk_msg moved data to the peer socket (not a drop)
	R_DROP_UNKNOWN_L3 = 17, // from/to a pod: not IPv4, IPv6 or ARP (Cilium's DROP_UNKNOWN_L3)
	R_DROP_VLAN = 18,       // VLAN-tagged (skb->vlan_present or a VLAN ethertype)
	R_PASS_ND = 19,         // ICMPv6 neighbour discovery, hop limit 255, link-local scope
	R_DROP_NO_ENDPOINT = 20, // socket-level: a registered cgroup's descendant without an entry
	R_HAIRPIN = 21,          // to_pod: handed to the veth's ingress for the proxy (not a drop)
	R_MAX = 32,
};

struct ipcache_key {
	__u32 prefixlen; // 32 (family+pad) + address prefix length
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;
};

struct endpoint_key {
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

struct endpoint_info {
	__u32 id;
	__u32 ifindex;
	__u32 identity;
	__u32 flags; // EP_*
};

// The policy map is an LPM trie. The endpoint id, remote identity and
// direction byte are always matched in full; the protocol is matched
// (prefix POLICY_PREFIX_PROTO) or not (POLICY_PREFIX_FIXED, any protocol);
// the destination port (the ICMP type for ICMP/ICMPv6) is matched on its
// leading bits, so a port range is a few power-of-two aligned blocks
// (Cilium's port prefix lengths), never one entry per port.
struct policy_key {
	__u32 prefixlen;
	__u32 endpoint_id;
	__u32 identity; // 0: any identity
	__u8 direction; // DIR_* | generation << 1 (see EP_POLICY_GEN)
	__u8 proto;
	__u16 dport; // network order (the LPM trie matches leading bits)
};

#define POLICY_PREFIX_FIXED 72 // endpoint_id, identity, direction
#define POLICY_PREFIX_PROTO 80
#define POLICY_PREFIX_FULL 96

struct policy_value {
	__u8 verdict;
	__u8 pad;
	__u16 proxy_port; // host order
	__u32 pad2;
};





struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_policy SEC(".maps");



struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, R_MAX * 2); // reason * 2 + direction
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_metrics SEC(".maps");

static __always_inline void count_metric(__u32 idx, __u64 bytes)
{
	struct metrics_value *m = bpf_map_lookup_elem(&ward_metrics, &idx);
	if (m) {
		m->packets++;
		m->bytes += bytes;
	}
}

static __always_inline struct endpoint_info *endpoint_of6(__u8 family, const __u32 *addr)
{
	struct endpoint_key k = {.family = family};
	k.addr[0] = addr[0];
	k.addr[1] = addr[1];
	k.addr[2] = addr[2];
	k.addr[3] = addr[3];
	return bpf_map_lookup_elem(&ward_endpoints, &k);
}

static __always_inline __u32 identity_of6(__u8 family, const __u32 *addr)
{
	struct ipcache_key k = {.prefixlen = 32 + (family == AF_INET6 ? 128 : 32), .family = family};
	k.addr[0] = addr[0];
	k.addr[1] = addr[1];
	k.addr[2] = addr[2];
	k.addr[3] = addr[3];
	struct ipcache_value *v = bpf_map_lookup_elem(&ward_ipcache, &k);
	return v ? v->identity : IDENTITY_WORLD;
}

// policy_dir is the policy key's direction byte: direction | generation << 1.
static __always_inline __u8 policy_dir(__u8 dir, __u32 ep_flags)
{
	return dir | ((ep_flags & EP_POLICY_GEN) ? 2 : 0);
}

// policy_lookup decides a new flow: the longest entry for the remote
// identity and the longest for any identity; a deny in either wins, else
// the identity's own entry decides, else the any-identity one. (Inside one
// identity a longer allow never hides a shorter deny: the writer turns
// every entry under a deny into a deny.) 0 means no entry (default deny).
static __always_inline int policy_lookup(__u32 ep, __u8 dir, __u32 remote, __u16 dport, __u8 proto,
					 __u16 *proxy_port)
{
	struct policy_key k = {
		.prefixlen = POLICY_PREFIX_FULL,
		.endpoint_id = ep,
		.identity = remote,
		.direction = dir,
		.proto = proto,
		.dport = bpf_htons(dport),
	};
	struct policy_value *v = bpf_map_lookup_elem(&ward_policy, &k);
	if (v && v->verdict == VERDICT_DENY)
		return VERDICT_DENY;
	k.identity = 0;
	struct policy_value *any = bpf_map_lookup_elem(&ward_policy, &k);
	if (any && any->verdict == VERDICT_DENY)
		return VERDICT_DENY;
	if (!v)
		v = any;
	if (!v)
		return 0;
	*proxy_port = v->proxy_port;
	return v->verdict;
}

#endif
