//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ward tc datapath: L3/L4 policy enforcement and TPROXY-style redirection
// (bpf_sk_assign) of policy-selected flows to node-local transparent proxies.
//
// Attach points (the host side of each endpoint's veth):
//   from_pod  tc ingress: packets leaving the endpoint. Applies the source's
//             egress policy and, when the destination is a local endpoint,
//             the destination's ingress policy too (so ingress redirects of
//             local traffic happen here, where bpf_sk_assign is allowed).
//   to_pod    tc egress: packets entering the endpoint. Applies the
//             destination's ingress policy to flows not already admitted.
//             A flow that needs the ingress proxy and did not come from a
//             local endpoint (another node, the world, the host) is
//             hairpinned: marked MARK_TO_PROXY | proxy port << 16 and
//             redirected (bpf_redirect BPF_F_INGRESS) to the ingress of
//             the same host-side veth, where from_pod sees the mark first
//             and does the bpf_sk_assign tc egress cannot do.
//   from_netdev tc ingress of the node's native devices (optional): the
//             later packets of such a flow from another node or the world
//             are assigned to the proxy's socket right there, before the
//             stack's TCP early demux would match them to that socket and
//             the forwarding path drop them. Everything else passes
//             untouched.
//
// Map layouts are mirrored in Go (bpf/redirect/maps.go); change both.
// Byte orders: addresses and CT ports are network order as on the wire;
// policy-key ports and proxy ports are host order.

#include "datapath.h"

struct ct_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport; // network order (ICMP echo request: the identifier)
	__u16 dport; // network order (ICMP echo reply: the identifier)
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct ct_value {
	__u64 last_seen; // bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC_COARSE) of the last packet, refreshed every CT_TOUCH_NS
	__u32 src_identity;
	__u16 proxy_port;
	__u8 verdict;
	__u8 flags;      // CT_*
	__u32 policy_rev; // ward_policy_rev when the verdict was decided
	__u32 pad;
};

struct frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_value {
	__u16 sport;
	__u16 dport;
	__u8 icmp_type;
	__u8 no_ct;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_frag SEC(".maps");

// ward_policy_rev[0] is bumped by every policy change (SetPolicy): a CT
// entry decided under an older revision is decided again, against the new
// policy, by the next packet of its opening direction.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_policy_rev SEC(".maps");

// CT entries are keyed by the canonical tuple (lower (addr, port) end
// first), so one lookup serves both directions; flags say which end
// opened the flow and how far it got.
#define CT_ORIG_SWAPPED 1
#define CT_SEEN_REPLY 2 // a packet went the other way
#define CT_CLOSING 4    // TCP FIN or RST seen

// Conntrack lifetimes since the last packet, Cilium's defaults
// (bpf/lib/conntrack.h; --bpf-ct-timeout-regular-{tcp,tcp-syn,tcp-fin,any}):
// an established TCP flow 6 h, a TCP flow not yet answered 60 s, a closing
// one 10 s, anything else 60 s. Expired entries are ignored (the packet is
// a new flow) and removed by Datapath.GC.
#define NSEC 1000000000ULL
#define CT_LIFETIME_TCP (21600 * NSEC)
#define CT_LIFETIME_SYN (60 * NSEC)
#define CT_LIFETIME_CLOSE (10 * NSEC)
#define CT_LIFETIME_ANY (60 * NSEC)
#define CT_TOUCH_NS NSEC // last_seen is refreshed at most once a second

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct pkt {
	struct ct_key t;  // the packet's own tuple
	struct ct_key ck; // canonical tuple (the CT key)
	int swapped;      // t is ck with its ends swapped
	__u32 l4off;
	__u16 pol_port;   // host order: the port or ICMP type policy is keyed by
	__u8 tcp_flags;
	__u8 no_ct;       // ICMP other than echo: decided per packet, never tracked
	__u8 nd;          // ICMPv6 neighbour discovery that may pass (see nd_ok)
	__u8 nd_src_ll;   // ... from a link-local or unspecified source
};

static __always_inline int count(struct __sk_buff *skb, enum reason r, int dir, int act)
{
	count_metric((__u32)r * 2 + (dir & 1), skb->len);
	return act;
}

#define PASS(r) count(skb, (r), dir, TC_ACT_OK)
#define DROP(r) count(skb, (r), dir, TC_ACT_SHOT)

#include "events.h"

static __always_inline void emit_event(struct __sk_buff *skb, const struct pkt *p, __u8 type, __u8 reason, __u8 verdict,
				       __u8 audit, int dir, __u32 ep_id, __u32 src_id, __u32 dst_id, __u16 proxy)
{
	struct flow_event e = {
		.sport = p->t.sport,
		.dport = p->t.dport,
		.src_identity = src_id,
		.dst_identity = dst_id,
		.ep_id = ep_id,
		.ifindex = skb->ifindex,
		.proxy_port = proxy,
		.type = type,
		.reason = reason,
		.verdict = verdict,
		.audit = audit,
		.dir = dir,
		.family = p->t.family,
		.proto = p->t.proto,
	};
	__builtin_memcpy(e.saddr, p->t.saddr, 16);
	__builtin_memcpy(e.daddr, p->t.daddr, 16);
	ev_output(&e);
}

// verdict_event reports a new flow's verdict in an enforced direction.
static __always_inline void verdict_event(struct __sk_buff *skb, const struct pkt *p, int verdict, __u8 audit, int dir,
					  __u32 ep_id, __u32 src_id, __u32 dst_id, __u16 proxy)
{
	if (!events_enabled || p->no_ct)
		return;
	emit_event(skb, p, EV_VERDICT, verdict == VERDICT_REDIRECT ? R_REDIRECT : R_PASS_ALLOWED, verdict, audit, dir,
		   ep_id, src_id, dst_id, proxy);
}

// drop_event counts a dropped packet and reports it (rate-limited) with
// the tuple parsed so far (zero before parsing). It returns TC_ACT_SHOT.
static __always_inline int drop_event(struct __sk_buff *skb, const struct pkt *p, enum reason r, int dir, __u32 ep_id)
{
	if (events_enabled) {
		__u32 h = mix32(skb->ifindex, ((__u32)p->t.dport << 16) | ((__u32)r << 8) | ((__u32)p->t.proto ^ ((__u32)dir << 7)));
		h = mix32(h, p->t.family);
		h = mix32(h, p->t.saddr[0]);
		h = mix32(h, p->t.saddr[1]);
		h = mix32(h, p->t.saddr[2]);
		h = mix32(h, p->t.saddr[3]);
		h = mix32(h, p->t.daddr[0]);
		h = mix32(h, p->t.daddr[1]);
		h = mix32(h, p->t.daddr[2]);
		h = mix32(h, p->t.daddr[3]);
		if (drop_rl_pass(h))
			emit_event(skb, p, EV_DROP, r, VERDICT_DENY, 0, dir, ep_id, 0, 0, 0);
	}
	return count(skb, r, dir, TC_ACT_SHOT);
}

#define DROP_EV(pp, r) drop_event(skb, (pp), (r), dir, 0)
// ---- end of flow events ----------------------------------------------

#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

// icmp fills the policy port (the type) and the tuple: an echo request or
// reply is tracked by its identifier, so the reply matches the request's
// entry; every other type is decided per packet.
static __always_inline int icmp(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[8];
	if (bpf_skb_load_bytes(skb, p->l4off, h, sizeof(h)) < 0)
		return R_DROP_MALFORMED;
	__u8 type = h[0];
	p->pol_port = type;
	int req = p->t.proto == IPPROTO_ICMP ? type == ICMP_ECHO : type == ICMPV6_ECHO_REQUEST;
	int rep = p->t.proto == IPPROTO_ICMP ? type == ICMP_ECHO_REPLY : type == ICMPV6_ECHO_REPLY;
	__u16 id;
	__builtin_memcpy(&id, &h[4], 2);
	// A request is (id, 0), a reply (0, id): the reply's tuple is the
	// request's reversed, and a request from the peer is not a reply.
	if (req)
		p->t.sport = id;
	else if (rep)
		p->t.dport = id;
	else
		p->no_ct = 1;
	return R_MAX;
}

static __always_inline int tcp_flags(struct __sk_buff *skb, struct pkt *p, void *data, void *end)
{
	__u32 off = p->l4off & 0xFF;
	__u8 *fl = data + off + 13;
	if ((void *)(fl + 1) <= end) {
		p->tcp_flags = *fl;
		return R_MAX;
	}
	if (bpf_skb_load_bytes(skb, p->l4off + 13, &p->tcp_flags, 1) < 0)
		return R_DROP_MALFORMED;
	return R_MAX;
}

static __always_inline int ip6_link_scope_dst(const struct ipv6hdr *ip6)
{
	__u8 b0 = ip6->daddr.in6_u.u6_addr8[0], b1 = ip6->daddr.in6_u.u6_addr8[1];
	return (b0 == 0xfe && (b1 & 0xc0) == 0x80) || (b0 == 0xff && (b1 & 0x0f) == 0x02);
}

static __always_inline int ip6_link_local_or_unspec_src(const struct ipv6hdr *ip6)
{
	const __u32 *w = ip6->saddr.in6_u.u6_addr32;
	if (!(w[0] | w[1] | w[2] | w[3]))
		return 1;
	__u8 b0 = ip6->saddr.in6_u.u6_addr8[0], b1 = ip6->saddr.in6_u.u6_addr8[1];
	return b0 == 0xfe && (b1 & 0xc0) == 0x80;
}

// parse fills p from an IPv4 or IPv6 packet. Returns -1 (pass: ARP), a
// reason to drop, or R_MAX when parsed. Anything else is dropped (default
// deny of unknown L3, as Cilium's DROP_UNKNOWN_L3): VLAN-tagged frames
// included — the kernel strips one tag before tc (skb->vlan_present), so a
// double-tagged frame would otherwise reach the stack untagged after tc.
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->vlan_present)
		return R_DROP_VLAN;
	__u16 proto = skb->protocol;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) || proto == bpf_htons(0x9100))
		return R_DROP_VLAN;
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6) && proto != bpf_htons(ETH_P_ARP))
		return R_DROP_UNKNOWN_L3;
	{
		// The frame's own ethertype must be the one the kernel
		// classified it by.
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > end) {
			if (skb->len < ETH_HLEN)
				return R_DROP_MALFORMED;
			bpf_skb_pull_data(skb, ETH_HLEN);
			data = (void *)(long)skb->data;
			end = (void *)(long)skb->data_end;
			eth = data;
			if ((void *)(eth + 1) > end)
				return R_DROP_MALFORMED;
		}
		if (eth->h_proto != proto)
			return R_DROP_UNKNOWN_L3;
	}
	if (proto == bpf_htons(ETH_P_ARP))
		return -1;

	if (proto == bpf_htons(ETH_P_IPV6)) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + sizeof(struct ipv6hdr) + 4 > end) {
			__u32 want = ETH_HLEN + sizeof(struct ipv6hdr) + 4;
			if (skb->len < want)
				return R_DROP_MALFORMED;
			bpf_skb_pull_data(skb, want);
			data = (void *)(long)skb->data;
			end = (void *)(long)skb->data_end;
			if (data + ETH_HLEN + sizeof(struct ipv6hdr) + 4 > end)
				return R_DROP_MALFORMED;
		}
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if (ip6->version != 6)
			return R_DROP_MALFORMED;
		// The addresses first: a drop below is reported with them.
		p->t.family = AF_INET6;
		__builtin_memcpy(p->t.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->t.daddr, &ip6->daddr, 16);
		p->t.proto = ip6->nexthdr;
		// Extension headers (fragments included) are not parsed:
		// dropped rather than let through unchecked.
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP && ip6->nexthdr != IPPROTO_ICMPV6)
			return ip6->nexthdr == 44 ? R_DROP_FRAGMENT : R_DROP_UNSUPPORTED_L3;
		p->l4off = ETH_HLEN + sizeof(struct ipv6hdr);
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			__u8 hop = ip6->hop_limit;
			int link_dst = ip6_link_scope_dst(ip6), ll_src = ip6_link_local_or_unspec_src(ip6);
			int r = icmp(skb, p);
			if (r != R_MAX)
				return r;
			// Neighbour discovery (RS, RA, NS, NA, redirect) keeps
			// the link up. It may pass unchecked only as the RFC
			// 4861 link-scope message it claims to be: hop limit
			// 255, link-scope destination. The caller still checks
			// the source (link-local/unspecified, or the endpoint's
			// own address). Every other ICMPv6 type, MLD and node
			// information included, goes through policy.
			if (p->pol_port >= 133 && p->pol_port <= 137 && hop == 255 && link_dst) {
				p->nd = 1;
				p->nd_src_ll = ll_src;
			}
			return R_MAX;
		}
		__u16 *ports = (void *)(ip6 + 1);
		p->t.sport = ports[0];
		p->t.dport = ports[1];
		p->pol_port = bpf_ntohs(ports[1]);
		if (ip6->nexthdr == IPPROTO_TCP)
			return tcp_flags(skb, p, data, end);
		return R_MAX;
	}

	// Direct packet access; pull the headers into the linear area when
	// they are not (bpf_skb_pull_data invalidates the pointers).
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + sizeof(struct iphdr) + 8 > end) {
		__u32 want = ETH_HLEN + sizeof(struct iphdr) + 8;
		if (skb->len < want)
			want = skb->len;
		bpf_skb_pull_data(skb, want);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + sizeof(struct iphdr) > end)
			return R_DROP_MALFORMED;
	}
	struct iphdr *ip = data + ETH_HLEN;
	if (ip->version != 4 || ip->ihl < 5)
		return R_DROP_MALFORMED;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot < ip->ihl * 4 || tot + ETH_HLEN > skb->len)
		return R_DROP_MALFORMED;

	p->t.family = AF_INET4;
	p->t.saddr[0] = ip->saddr;
	p->t.daddr[0] = ip->daddr;
	p->t.proto = ip->protocol;
	p->l4off = ETH_HLEN + ip->ihl * 4;

	__u16 frag = bpf_ntohs(ip->frag_off);
	int first_frag = 0;
	struct frag_key fk = {
		.saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .proto = ip->protocol,
	};
	if (frag & 0x3FFF) {
		if (frag & 0x1FFF) {
			// Non-first fragment: no L4 header. It follows its
			// first fragment's ports or is dropped.
			struct frag_value *fv = bpf_map_lookup_elem(&ward_frag, &fk);
			if (!fv)
				return R_DROP_FRAGMENT;
			p->t.sport = fv->sport;
			p->t.dport = fv->dport;
			p->no_ct = fv->no_ct;
			p->pol_port = p->t.proto == IPPROTO_ICMP ? fv->icmp_type : bpf_ntohs(fv->dport);
			return R_MAX;
		}
		first_frag = 1;
	}

	if (p->t.proto == IPPROTO_TCP || p->t.proto == IPPROTO_UDP) {
		__u32 l4 = p->l4off & 0x7F;
		__u16 *ports = data + l4;
		if ((void *)(ports + 2) > end) {
			if (bpf_skb_load_bytes(skb, p->l4off, &p->t.sport, 4) < 0)
				return R_DROP_MALFORMED;
		} else {
			p->t.sport = ports[0];
			p->t.dport = ports[1];
		}
		p->pol_port = bpf_ntohs(p->t.dport);
		if (p->t.proto == IPPROTO_TCP && !first_frag) {
			int r = tcp_flags(skb, p, data, end);
			if (r != R_MAX)
				return r;
		}
	} else if (p->t.proto == IPPROTO_ICMP) {
		int r = icmp(skb, p);
		if (r != R_MAX)
			return r;
	}
	if (first_frag) {
		struct frag_value fv = {
			.sport = p->t.sport, .dport = p->t.dport, .icmp_type = (__u8)p->pol_port, .no_ct = p->no_ct,
		};
		bpf_map_update_elem(&ward_frag, &fk, &fv, BPF_ANY);
	}
	return R_MAX;
}

static __always_inline void ct_canon(struct pkt *p)
{
	// Any total order works as long as both directions agree: compare
	// the address words, then the ports (IPv4 uses word 0 only).
	int swap = 0, decided = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (!decided && p->t.saddr[i] != p->t.daddr[i]) {
			swap = bpf_ntohl(p->t.saddr[i]) > bpf_ntohl(p->t.daddr[i]);
			decided = 1;
		}
	}
	if (!decided)
		swap = bpf_ntohs(p->t.sport) > bpf_ntohs(p->t.dport);
	p->ck.family = p->t.family;
	p->ck.proto = p->t.proto;
	p->swapped = swap;
	if (!swap) {
		__builtin_memcpy(p->ck.saddr, p->t.saddr, 16);
		__builtin_memcpy(p->ck.daddr, p->t.daddr, 16);
		p->ck.sport = p->t.sport;
		p->ck.dport = p->t.dport;
	} else {
		__builtin_memcpy(p->ck.saddr, p->t.daddr, 16);
		__builtin_memcpy(p->ck.daddr, p->t.saddr, 16);
		p->ck.sport = p->t.dport;
		p->ck.dport = p->t.sport;
	}
}

// ct_is_reply reports whether the packet goes against the flow's opening
// direction.
static __always_inline int ct_is_reply(const struct pkt *p, const struct ct_value *ct)
{
	return ((ct->flags & CT_ORIG_SWAPPED) != 0) != (p->swapped != 0);
}

static __always_inline __u32 policy_rev(void)
{
	__u32 zero = 0;
	__u32 *rev = bpf_map_lookup_elem(&ward_policy_rev, &zero);
	return rev ? *rev : 0;
}

static __always_inline __u64 ct_lifetime(const struct ct_value *ct, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_ANY;
	if (ct->flags & CT_CLOSING)
		return CT_LIFETIME_CLOSE;
	if (!(ct->flags & CT_SEEN_REPLY))
		return CT_LIFETIME_SYN;
	return CT_LIFETIME_TCP;
}

// ct_lookup returns the packet's live CT entry, refreshing it; NULL for an
// untracked packet, a missing or expired entry, or a TCP SYN opening a new
// connection over a closing one (a reused tuple is a new flow).
static __always_inline struct ct_value *ct_lookup(struct pkt *p, __u64 now)
{
	if (p->no_ct)
		return 0;
	struct ct_value *ct = bpf_map_lookup_elem(&ward_ct, &p->ck);
	if (!ct)
		return 0;
	if (now - ct->last_seen > ct_lifetime(ct, p->t.proto))
		return 0;
	int reply = ct_is_reply(p, ct);
	if (p->t.proto == IPPROTO_TCP && !reply && (ct->flags & CT_CLOSING) &&
	    (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
		return 0;
	__u8 add = reply ? CT_SEEN_REPLY : 0;
	if (p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))
		add |= CT_CLOSING;
	if ((ct->flags & add) != add)
		ct->flags |= add;
	if (now - ct->last_seen > CT_TOUCH_NS)
		ct->last_seen = now;
	return ct;
}

static __always_inline void ct_create(const struct pkt *p, int verdict, __u16 proxy_port, __u32 src_id, __u32 rev, __u64 now)
{
	if (p->no_ct)
		return;
	struct ct_value v = {
		.last_seen = now,
		.src_identity = src_id,
		.proxy_port = proxy_port,
		.verdict = verdict,
		.flags = p->swapped ? CT_ORIG_SWAPPED : 0,
		.policy_rev = rev,
	};
	if (p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))
		v.flags |= CT_CLOSING;
	bpf_map_update_elem(&ward_ct, &p->ck, &v, BPF_ANY);
}

// ct_redecide records a new verdict for a flow decided again after a
// policy change, keeping its state.
static __always_inline void ct_redecide(struct ct_value *ct, int verdict, __u16 proxy_port, __u32 rev)
{
	ct->verdict = verdict;
	ct->proxy_port = proxy_port;
	ct->policy_rev = rev;
}

// assign hands the packet to the transparent proxy listening on
// proxy_port in this (the host) namespace: an existing socket for the
// exact flow first, else the listener on 0.0.0.0/<orig dst>:proxy_port,
// else 127.0.0.1:proxy_port. The socket's local address then is the
// original destination (TPROXY semantics).
// sock_tuple fills tup with the packet's addresses and ports (the
// socket lookups' view: saddr the remote end) and returns its length.
static __always_inline __u32 sock_tuple(struct bpf_sock_tuple *tup, const struct pkt *p)
{
	if (p->t.family == AF_INET6) {
		__builtin_memcpy(tup->ipv6.saddr, p->t.saddr, 16);
		__builtin_memcpy(tup->ipv6.daddr, p->t.daddr, 16);
		tup->ipv6.sport = p->t.sport;
		tup->ipv6.dport = p->t.dport;
		return sizeof(tup->ipv6);
	}
	tup->ipv4.saddr = p->t.saddr[0];
	tup->ipv4.daddr = p->t.daddr[0];
	tup->ipv4.sport = p->t.sport;
	tup->ipv4.dport = p->t.dport;
	return sizeof(tup->ipv4);
}

static __always_inline int assign(struct __sk_buff *skb, struct pkt *p, __u16 proxy_port)
{
	struct bpf_sock_tuple tup = {};
	struct bpf_sock *sk = 0;
	__u32 tlen;
	long err;

	tlen = sock_tuple(&tup, p);

#define SET_DPORT(v)                          \
	do {                                  \
		if (p->t.family == AF_INET6)  \
			tup.ipv6.dport = (v); \
		else                          \
			tup.ipv4.dport = (v); \
	} while (0)
#define SET_LOOPBACK()                                                        \
	do {                                                                  \
		if (p->t.family == AF_INET6) {                                \
			__builtin_memset(tup.ipv6.daddr, 0, 16);              \
			tup.ipv6.daddr[3] = bpf_htonl(1);                     \
		} else {                                                      \
			tup.ipv4.daddr = bpf_htonl(0x7f000001);               \
		}                                                             \
	} while (0)

	if (p->t.proto == IPPROTO_TCP) {
		// The flow's own socket first. A SYN reusing the tuple of a
		// connection the proxy closed meets its TIME_WAIT socket, which
		// answers with an ACK; the client's reset clears it and the SYN's
		// retransmission (1 s) reaches the listener. (Handed straight to
		// the listener, the SYN would be dropped as long as the TIME_WAIT
		// socket holds the tuple: the kernel refuses a duplicate.)
		sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			if (sk->state != BPF_TCP_LISTEN)
				goto assign;
			bpf_sk_release(sk);
		}
		SET_DPORT(bpf_htons(proxy_port));
		sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk) {
			SET_LOOPBACK();
			sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		}
		if (!sk)
			return -1;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return -1;
		}
	} else if (p->t.proto == IPPROTO_UDP) {
		SET_DPORT(bpf_htons(proxy_port));
		sk = bpf_sk_lookup_udp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk) {
			SET_LOOPBACK();
			sk = bpf_sk_lookup_udp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		}
		if (!sk)
			return -1;
	} else {
		return -1;
	}
#undef SET_DPORT
#undef SET_LOOPBACK
assign:
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = MARK_TO_PROXY;
	return 0;
}

static __always_inline int redirect(struct __sk_buff *skb, struct pkt *p, __u16 proxy_port, int dir)
{
	// Fragments of a redirected flow would have to follow the first one
	// into the proxy socket; rather than risk a half-redirected datagram,
	// drop them (counted).
	if (p->t.proto == IPPROTO_UDP && p->t.family == AF_INET4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) == 0 &&
		    (bpf_ntohs(ip.frag_off) & 0x3FFF))
			return DROP_EV(p, R_DROP_FRAGMENT);
	}
	if (assign(skb, p, proxy_port) < 0)
		return DROP_EV(p, R_DROP_NO_PROXY);
	return PASS(R_REDIRECT);
}

// hairpin hands a flow that reached to_pod (tc egress, where
// bpf_sk_assign is refused) to the ingress proxy: the proxy port travels in
// the mark (MARK_TO_PROXY | port << 16) and the packet is redirected to the
// ingress of the same veth, whose from_pod assigns it (from_hairpin). The
// mark cannot come from a pod: veth scrubs it when the packet crosses
// namespaces (skb_scrub_packet, xnet).
static __always_inline int hairpin(struct __sk_buff *skb, struct pkt *p, __u16 proxy_port, int dir)
{
	if (p->t.proto == IPPROTO_UDP && p->t.family == AF_INET4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) == 0 &&
		    (bpf_ntohs(ip.frag_off) & 0x3FFF))
			return DROP_EV(p, R_DROP_FRAGMENT);
	}
	skb->mark = MARK_TO_PROXY | ((__u32)proxy_port << 16);
	long act = bpf_redirect(skb->ifindex, BPF_F_INGRESS);
	if (act != TC_ACT_REDIRECT)
		return DROP_EV(p, R_DROP_NO_PROXY);
	return count(skb, R_HAIRPIN, dir, act);
}

// from_hairpin is the second half of hairpin, in from_pod: the packet is
// addressed to the pod (its MAC too, so the stack took it for another
// host: PACKET_OTHERHOST); it becomes a local packet assigned to the
// proxy's socket, and the proxy routing rule delivers it.
static __always_inline int from_hairpin(struct __sk_buff *skb, __u32 mark)
{
	const int dir = DIR_INGRESS;
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r < 0)
		return DROP_EV(&p, R_DROP_MALFORMED);
	if (r != R_MAX)
		return DROP_EV(&p, r);
	if (bpf_skb_change_type(skb, 0 /* PACKET_HOST */) < 0)
		return DROP_EV(&p, R_DROP_NO_PROXY);
	if (assign(skb, &p, (__u16)(mark >> 16)) < 0)
		return DROP_EV(&p, R_DROP_NO_PROXY);
	return PASS(R_REDIRECT);
}

// nd_ok reports whether a neighbour-discovery packet passes unchecked
// given the (endpoint) source check's outcome.
static __always_inline int nd_ok(const struct pkt *p, int own_src)
{
	return p->nd && (p->nd_src_ll || own_src);
}

// The host firewall: host_in, host_out and the host's ingress policy for
// local pods' flows to the node (hostfw.h).
#include "hostfw.h"

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	const int dir = DIR_EGRESS;
	__u32 mark = skb->mark;
	if ((mark & MARK_MAGIC_MASK) == MARK_TO_PROXY)
		return from_hairpin(skb, mark);
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r < 0)
		return PASS(R_PASS_NON_IP);
	if (r != R_MAX)
		return DROP_EV(&p, r);

	// A link-local source cannot be checked against the endpoint map;
	// such ND never leaves the link (the stack does not forward it).
	if (nd_ok(&p, 0))
		return PASS(R_PASS_ND);
	struct endpoint_info *ep = endpoint_of6(p.t.family, p.t.saddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return DROP_EV(&p, R_DROP_SPOOFED);
	if (ep->flags & EP_LOCKDOWN)
		return drop_event(skb, &p, R_DROP_LOCKDOWN, dir, ep->id);
	if (nd_ok(&p, 1))
		return PASS(R_PASS_ND);

	ct_canon(&p);
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 rev = policy_rev();
	struct ct_value *ct = ct_lookup(&p, now);
	if (ct) {
		if (ct_is_reply(&p, ct))
			return PASS(R_PASS_REPLY);
		if (ct->policy_rev == rev) {
			if (ct->verdict == VERDICT_REDIRECT)
				return redirect(skb, &p, ct->proxy_port, dir);
			return PASS(R_PASS_ESTABLISHED);
		}
		// Decided under an older policy: decide again below.
	}

	__u32 ep_id = ep->id, src_id = ep->identity, flags = ep->flags;
	__u16 dport = p.pol_port;
	__u16 proxy = 0;
	int verdict = VERDICT_ALLOW;
	int enforced = 0;
	// For the verdict events: the remote identity of the egress lookup,
	// each direction's own verdict and whether audit mode let it pass.
	__u32 remote = 0, dst_ep = 0, dst_id = 0;
	int ev_out = verdict, ev_in = 0;
	__u8 aud_out = 0, aud_in = 0;
	__u16 oproxy = 0, iproxy = 0;

	if (flags & EP_ENFORCE_EGRESS) {
		enforced = 1;
		remote = identity_of6(p.t.family, p.t.daddr);
		verdict = policy_lookup(ep_id, policy_dir(DIR_EGRESS, flags), remote, dport, p.t.proto, &proxy);
		if (verdict != VERDICT_ALLOW && verdict != VERDICT_REDIRECT) {
			if (!(flags & EP_AUDIT)) {
				if (ct)
					bpf_map_delete_elem(&ward_ct, &p.ck);
				return drop_event(skb, &p, R_DROP_POLICY, dir, ep_id);
			}
			verdict = VERDICT_ALLOW;
			aud_out = 1;
		}
		ev_out = verdict;
		oproxy = proxy;
	}

	// A local destination's ingress policy is applied here too, so that
	// an ingress redirect can use bpf_sk_assign (tc ingress only).
	struct endpoint_info *dst = endpoint_of6(p.t.family, p.t.daddr);
	if (dst) {
		dst_ep = dst->id;
		dst_id = dst->identity;
		if (dst->flags & EP_LOCKDOWN)
			return drop_event(skb, &p, R_DROP_LOCKDOWN, DIR_INGRESS, dst_ep);
		if (dst->flags & EP_ENFORCE_INGRESS) {
			enforced = 1;
			int iv = policy_lookup(dst_ep, policy_dir(DIR_INGRESS, dst->flags), src_id, dport, p.t.proto, &iproxy);
			if (iv != VERDICT_ALLOW && iv != VERDICT_REDIRECT) {
				if (!(dst->flags & EP_AUDIT)) {
					if (ct)
						bpf_map_delete_elem(&ward_ct, &p.ck);
					return drop_event(skb, &p, R_DROP_POLICY, DIR_INGRESS, dst_ep);
				}
				iv = VERDICT_ALLOW;
				aud_in = 1;
			}
			ev_in = iv;
			if (iv == VERDICT_REDIRECT && verdict != VERDICT_REDIRECT) {
				verdict = VERDICT_REDIRECT;
				proxy = iproxy;
			}
		}
	} else {
		// To the node? Its host firewall's ingress policy decides too,
		// also when the pod's egress L7 rules redirect the flow: the
		// proxy's upstream connection to the node crosses no device.
		__u32 hid = 0;
		int hr = host_from_pod(&p, src_id, skb->len, &hid, &aud_in);
		if (hr) {
			if (ct)
				bpf_map_delete_elem(&ward_ct, &p.ck);
			return drop_event(skb, &p, hr, DIR_INGRESS, hid);
		}
		if (hid) {
			enforced = 1;
			dst_ep = hid;
			dst_id = IDENTITY_HOST;
			ev_in = VERDICT_ALLOW;
		}
	}

	if (ct) {
		ct_redecide(ct, verdict, proxy, rev);
	} else {
		ct_create(&p, verdict, proxy, src_id, rev, now);
		if (flags & EP_ENFORCE_EGRESS)
			verdict_event(skb, &p, ev_out, aud_out, DIR_EGRESS, ep_id, src_id, remote, oproxy);
		if (ev_in)
			verdict_event(skb, &p, ev_in, aud_in, DIR_INGRESS, dst_ep, src_id, dst_id, iproxy);
	}
	if (verdict == VERDICT_REDIRECT)
		return redirect(skb, &p, proxy, dir);
	return PASS(enforced ? R_PASS_ALLOWED : R_PASS_NOT_ENFORCED);
}

// proxy_upstream reports whether a TCP packet addressed to a local pod
// belongs to a connected socket of this (the host's) namespace: an egress
// proxy's upstream connection, which leaves from the pod's own address
// (Envoy's original_src), so its replies come back addressed to the pod.
// A pod's own sockets are in its namespace, never found here; listeners
// are not taken.
static __always_inline int proxy_upstream(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock_tuple tup = {};
	__u32 tlen = sock_tuple(&tup, p);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int ours = sk->state != BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return ours;
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	const int dir = DIR_INGRESS;
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r < 0)
		return PASS(R_PASS_NON_IP);
	if (r != R_MAX)
		return DROP_EV(&p, r);
	// Only the host is on the other end of the veth.
	if (nd_ok(&p, 0))
		return PASS(R_PASS_ND);

	struct endpoint_info *ep = endpoint_of6(p.t.family, p.t.daddr);
	if (!ep)
		return DROP_EV(&p, R_DROP_UNKNOWN_ENDPOINT);
	if (ep->flags & EP_LOCKDOWN)
		return drop_event(skb, &p, R_DROP_LOCKDOWN, dir, ep->id);
	// The node's own answer to the endpoint's egress proxy (whose upstream
	// to the node left from the endpoint's address): sent by the host, it
	// never crossed prerouting, where the proxy routing's socket mark
	// takes the other answers (nft.go). Hairpinned to the proxy's socket,
	// the flow's own (from_hairpin, assign; port 0: no listener). Only an
	// endpoint with an egress policy has an egress proxy.
	__u32 saddr_id = 0; // the source address's identity, once looked up
	if ((ep->flags & EP_ENFORCE_EGRESS) && p.t.proto == IPPROTO_TCP &&
	    (saddr_id = identity_of6(p.t.family, p.t.saddr)) == IDENTITY_HOST && proxy_upstream(skb, &p))
		return hairpin(skb, &p, 0, dir);

	ct_canon(&p);
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 rev = policy_rev();
	struct ct_value *ct = ct_lookup(&p, now);
	if (ct && ct_is_reply(&p, ct))
		return PASS(R_PASS_REPLY);

	__u32 mark = skb->mark;
	__u32 src_id;
	if ((mark & MARK_MAGIC_MASK) == MARK_PROXY_INGRESS) {
		// The ingress proxy already applied this endpoint's policy.
		if (!ct)
			ct_create(&p, VERDICT_ALLOW, 0, 0, rev, now);
		return PASS(R_PASS_PROXY);
	}
	if ((mark & MARK_MAGIC_MASK) == MARK_PROXY_EGRESS)
		src_id = (mark >> 16) | ((mark & 0xFF) << 16);
	else
		src_id = saddr_id ? saddr_id : identity_of6(p.t.family, p.t.saddr);
	// An egress proxy's upstream leaves from its client's address, so it
	// may take the 4-tuple of the client's own connection to the proxy,
	// whose conntrack entry says redirect: that entry is the client's,
	// never the upstream's to follow or to change.
	int shared = ct && ct->verdict == VERDICT_REDIRECT && (mark & MARK_MAGIC_MASK) == MARK_PROXY_EGRESS;

	// Flows from local endpoints were decided, and redirected, by their
	// from_pod; a redirect verdict here is a flow from elsewhere (another
	// node, the world, the host), hairpinned to the proxy.
	if (ct && !shared && ct->policy_rev == rev) {
		if (ct->verdict == VERDICT_REDIRECT)
			return hairpin(skb, &p, ct->proxy_port, dir);
		return PASS(R_PASS_ESTABLISHED);
	}

	// From the node itself (not a proxy acting for an endpoint): its host
	// firewall's egress policy decides too.
	__u32 hid = 0;
	__u8 haud = 0;
	if (src_id == IDENTITY_HOST && (mark & MARK_MAGIC_MASK) != MARK_PROXY_EGRESS) {
		int hr = host_local(&p, DIR_EGRESS, ep->identity, skb->len, &hid, &haud);
		if (hr) {
			if (ct)
				bpf_map_delete_elem(&ward_ct, &p.ck);
			return drop_event(skb, &p, hr, DIR_EGRESS, hid);
		}
	}

	int verdict = VERDICT_ALLOW;
	__u16 proxy = 0;
	__u8 audit = 0;
	if (ep->flags & EP_ENFORCE_INGRESS) {
		verdict = policy_lookup(ep->id, policy_dir(DIR_INGRESS, ep->flags), src_id, p.pol_port, p.t.proto, &proxy);
		if (verdict != VERDICT_ALLOW && verdict != VERDICT_REDIRECT) {
			if (!(ep->flags & EP_AUDIT)) {
				if (ct)
					bpf_map_delete_elem(&ward_ct, &p.ck);
				return drop_event(skb, &p, R_DROP_POLICY, dir, ep->id);
			}
			verdict = VERDICT_ALLOW;
			audit = 1;
		}
		// An egress proxy's upstream: the egress proxy applies this
		// endpoint's ingress L7 rules itself (MARK_INGRESS_CHECKED: one
		// proxy on the path, not two), so pass it; fail closed
		// otherwise.
		if (verdict == VERDICT_REDIRECT && (mark & MARK_MAGIC_MASK) == MARK_PROXY_EGRESS) {
			if (!(mark & MARK_INGRESS_CHECKED))
				return drop_event(skb, &p, R_DROP_REDIRECT_UNSUPPORTED, dir, ep->id);
			verdict = VERDICT_ALLOW;
			proxy = 0;
		}
	}
	if (shared)
		return PASS(R_PASS_PROXY);
	if (ct) {
		// Re-decided after a policy change; a verdict that moves the
		// flow to or from the proxy mid-stream resets it (fail closed).
		ct_redecide(ct, verdict, proxy, rev);
		if (verdict == VERDICT_REDIRECT)
			return hairpin(skb, &p, proxy, dir);
		return PASS(R_PASS_ESTABLISHED);
	}
	if (hid)
		verdict_event(skb, &p, VERDICT_ALLOW, haud, DIR_EGRESS, hid, IDENTITY_HOST, ep->identity, 0);
	if (ep->flags & EP_ENFORCE_INGRESS)
		verdict_event(skb, &p, verdict, audit, dir, ep->id, src_id, ep->identity, proxy);
	if (verdict == VERDICT_REDIRECT) {
		ct_create(&p, VERDICT_REDIRECT, proxy, src_id, rev, now);
		return hairpin(skb, &p, proxy, dir);
	}
	ct_create(&p, VERDICT_ALLOW, 0, src_id, rev, now);
	return PASS((ep->flags & EP_ENFORCE_INGRESS) ? R_PASS_ALLOWED : R_PASS_NOT_ENFORCED);
}

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	const int dir = DIR_INGRESS;
	struct pkt p = {};
	// Not IP, or not parsed: not ours to judge here (the host's traffic).
	if (parse(skb, &p) != R_MAX || p.t.proto != IPPROTO_TCP)
		return TC_ACT_OK;
	if (!endpoint_of6(p.t.family, p.t.daddr))
		return TC_ACT_OK;
	ct_canon(&p);
	struct ct_value *ct = bpf_map_lookup_elem(&ward_ct, &p.ck);
	// Only an established redirected flow from off the node, as to_pod
	// decided it under the current policy; to_pod decides anything else
	// (a new flow, a policy change) and hairpins it.
	if (!ct || ct->verdict != VERDICT_REDIRECT || ct_is_reply(&p, ct) || ct->policy_rev != policy_rev())
		return TC_ACT_OK;
	// A SYN (maybe a reused tuple) is to_pod's to decide.
	if ((p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
		return TC_ACT_OK;
	__u64 now = bpf_ktime_get_coarse_ns();
	ct = ct_lookup(&p, now);
	if (!ct)
		return TC_ACT_OK;
	struct bpf_sock_tuple tup = {};
	__u32 tlen = sock_tuple(&tup, &p);
	// The proxy's accepted socket for the flow (the pod's own sockets are
	// in the pod's namespace, never found here).
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_OK;
	if (sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_OK;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return TC_ACT_OK;
	skb->mark = MARK_TO_PROXY;
	return PASS(R_REDIRECT);
}

char __license[] SEC("license") = "Dual BSD/GPL";
