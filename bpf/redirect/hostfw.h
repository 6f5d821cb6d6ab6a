// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The host firewall (Cilium's enable-host-firewall): host policies
// (nodeSelector) enforced for the node itself on its native devices.
//
//   host_in   tc ingress of a native device, first in the tcx chain (before
//             from_netdev): packets addressed to the node's own addresses
//             (ipcache identity host) are decided by the host endpoint's
//             ingress policy.
//   host_out  tc egress of a native device: packets the node sends from
//             its own addresses (host-network processes) are decided by
//             the host endpoint's egress policy; the proxies' upstream
//             connections (they carry MARK_PROXY_*) are the pods' traffic,
//             not the host's, and pass. A port with DNS rules is
//             redirected to the DNS proxy: hairpinned (MARK_TO_PROXY |
//             port << 16) to the device's own ingress, where host_in
//             assigns it to the proxy's socket (bpf_sk_assign works at tc
//             ingress only).
//
//   from_pod  (redirect.c) a local pod's new flow to one of the node's
//   to_pod    addresses is decided by the host endpoint's ingress policy
//             too (host_from_pod), the node's new flow to a local pod by
//             its egress policy (host_local): they never cross a native
//             device.
//
// Everything else (traffic of pods, forwarded traffic, non-IP) is not the
// host firewall's: the programs return TC_ACT_UNSPEC (TCX_NEXT), so the
// next program of the chain (from_netdev) or the stack decides.
//
// State: ward_host[0] is the agent's host endpoint (its policy map id and
// EP_* flags, written with each policy generation flip); ward_host[1] is
// the operator's override (`ward bpf host-firewall audit|enforce`, written
// into the pinned map, reset by the agent at start: as in Cilium, audit
// mode set at runtime does not survive a restart).
//
// Cost: a host endpoint that no host policy selects enforces nothing
// (Cilium: the host endpoint without policy allows all) and the programs
// return after one array lookup, without parsing or conntrack. Once a
// direction is enforced, every host flow is tracked in both directions
// (ward_ct), so replies to flows of the other direction pass.

#ifndef WARD_HOSTFW_H
#define WARD_HOSTFW_H

// EP_AUDIT (datapath.h) on the host endpoint: would-be drops pass, are
// counted as R_HOST_AUDIT and reported as audited verdict events.

// R_HOST_AUDIT counts host firewall would-be drops that audit mode let pass.
#define R_HOST_AUDIT 30

#define IDENTITY_HOST 1

// Operator override modes (ward_host[1].flags).
#define HOST_MODE_CONFIG 0
#define HOST_MODE_AUDIT 1
#define HOST_MODE_ENFORCE 2

struct host_state {
	__u32 id;    // the host endpoint's id in the policy map
	__u32 flags; // EP_* ([0]); HOST_MODE_* ([1])
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct host_state);
	__uint(max_entries, 2);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_host SEC(".maps");

#define HOST_ENFORCING (EP_ENFORCE_INGRESS | EP_ENFORCE_EGRESS | EP_LOCKDOWN)

// host_flags returns the host endpoint's effective flags (the operator's
// audit/enforce override applied) and its id; 0 when it enforces nothing.
static __always_inline __u32 host_flags(__u32 *id)
{
	__u32 k = 0;
	struct host_state *h = bpf_map_lookup_elem(&ward_host, &k);
	if (!h || !(h->flags & HOST_ENFORCING))
		return 0;
	__u32 flags = h->flags;
	*id = h->id;
	k = 1;
	struct host_state *o = bpf_map_lookup_elem(&ward_host, &k);
	if (o && o->flags == HOST_MODE_AUDIT)
		flags |= EP_AUDIT;
	else if (o && o->flags == HOST_MODE_ENFORCE)
		flags &= ~EP_AUDIT;
	return flags;
}

// host_judge decides a host flow that conntrack does not know (or knew
// under an older policy): remote is the peer's identity. Returns the TC
// action. A new flow in an enforced direction is reported (a verdict
// event, audit set when audit mode let a would-be drop pass); a drop is
// reported as a drop event (flow events, redirect.c).
static __always_inline int host_judge(struct __sk_buff *skb, struct pkt *p, struct ct_value *ct, __u32 id,
				      __u32 flags, int dir, __u32 remote, __u32 rev, __u64 now)
{
	int enforced = flags & (dir == DIR_INGRESS ? EP_ENFORCE_INGRESS : EP_ENFORCE_EGRESS);
	enum reason pass = R_PASS_NOT_ENFORCED;
	if (enforced) {
		__u16 proxy = 0;
		__u8 audit = 0;
		int v = policy_lookup(id, policy_dir(dir, flags), remote, p->pol_port, p->t.proto, &proxy);
		pass = R_PASS_ALLOWED;
		if (v == VERDICT_REDIRECT && dir == DIR_EGRESS && proxy &&
		    (p->t.proto == IPPROTO_UDP || p->t.proto == IPPROTO_TCP)) {
			// DNS rules of a host policy: the query goes to the DNS
			// proxy through the device's own ingress (host_in assigns
			// it, as from_pod does for the pods' hairpin).
			verdict_event(skb, p, VERDICT_REDIRECT, 0, dir, id, IDENTITY_HOST, remote, proxy);
			if (ct)
				ct_redecide(ct, VERDICT_REDIRECT, proxy, rev);
			else
				ct_create(p, VERDICT_REDIRECT, proxy, IDENTITY_HOST, rev, now);
			return hairpin(skb, p, proxy, dir);
		}
		if (v != VERDICT_ALLOW) {
			// An ingress redirect has no proxy path on the native
			// device: not allowed.
			if (!(flags & EP_AUDIT)) {
				if (ct)
					bpf_map_delete_elem(&ward_ct, &p->ck);
				return drop_event(skb, p, v == VERDICT_REDIRECT ? R_DROP_REDIRECT_UNSUPPORTED : R_DROP_POLICY,
						  dir, id);
			}
			pass = R_HOST_AUDIT;
			audit = 1;
		}
		verdict_event(skb, p, VERDICT_ALLOW, audit, dir, id, dir == DIR_INGRESS ? remote : IDENTITY_HOST,
			      dir == DIR_INGRESS ? IDENTITY_HOST : remote, 0);
	}
	if (ct)
		ct_redecide(ct, VERDICT_ALLOW, 0, rev);
	else
		ct_create(p, VERDICT_ALLOW, 0, dir == DIR_INGRESS ? remote : IDENTITY_HOST, rev, now);
	return count(skb, pass, dir, TC_ACT_OK);
}

// host_local decides the host endpoint's side of a new flow between the
// node and one of its pods, which never crosses a native device: its
// ingress policy for a pod's flow to the node (from_pod), its egress
// policy for the node's flow to a pod (to_pod); peer is the pod's
// identity. It returns 0 when the flow may pass, else the drop reason;
// *id is the host endpoint's id when its policy decided (0: the direction
// is not enforced), *audit 1 when audit mode let a would-be drop pass
// (counted as R_HOST_AUDIT).
static __always_inline int host_local(const struct pkt *p, int dir, __u32 peer, __u32 len, __u32 *id, __u8 *audit)
{
	__u32 hid = 0;
	__u32 flags = host_flags(&hid);
	__u32 enforce = dir == DIR_INGRESS ? EP_ENFORCE_INGRESS : EP_ENFORCE_EGRESS;
	if (!(flags & (enforce | EP_LOCKDOWN)))
		return 0;
	if (flags & EP_LOCKDOWN) {
		*id = hid;
		return R_DROP_LOCKDOWN;
	}
	*id = hid;
	__u16 proxy = 0;
	int v = policy_lookup(hid, policy_dir(dir, flags), peer, p->pol_port, p->t.proto, &proxy);
	if (v == VERDICT_ALLOW)
		return 0;
	if (!(flags & EP_AUDIT))
		return v == VERDICT_REDIRECT ? R_DROP_REDIRECT_UNSUPPORTED : R_DROP_POLICY;
	*audit = 1;
	count_metric((__u32)R_HOST_AUDIT * 2 + dir, len);
	return 0;
}

// host_from_pod is host_local for from_pod: a local pod's (src_id) new
// flow, when it goes to one of the node's addresses.
static __always_inline int host_from_pod(const struct pkt *p, __u32 src_id, __u32 len, __u32 *id, __u8 *audit)
{
	__u32 hid = 0;
	if (!host_flags(&hid) || identity_of6(p->t.family, p->t.daddr) != IDENTITY_HOST)
		return 0;
	return host_local(p, DIR_INGRESS, src_id, len, id, audit);
}

// host_packet is the common path of host_in and host_out.
static __always_inline int host_packet(struct __sk_buff *skb, int dir)
{
	__u32 id = 0;
	__u32 flags = host_flags(&id);
	if (!flags)
		return TC_ACT_UNSPEC;
	// The proxies' upstream connections (Envoy's, the DNS proxy's) act
	// for an endpoint: not decided by the host's egress policy, only
	// tracked, so their replies pass the host's ingress policy.
	int proxied = 0;
	if (dir == DIR_EGRESS) {
		__u32 m = skb->mark & MARK_MAGIC_MASK;
		proxied = m == MARK_PROXY_INGRESS || m == MARK_PROXY_EGRESS;
	}
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r < 0 || r == R_DROP_VLAN || r == R_DROP_UNKNOWN_L3)
		return TC_ACT_UNSPEC; // not IP: the stack's (ARP, VLAN sub-interfaces)
	if (r != R_MAX) {
		// IP the parser cannot judge (IPv6 extension headers, orphan
		// fragments, malformed): the pods' path drops it too; drop it
		// rather than let it reach the host unchecked.
		return drop_event(skb, &p, r, dir, id);
	}
	if (p.nd && p.nd_src_ll)
		return TC_ACT_UNSPEC;
	__u32 *local = dir == DIR_INGRESS ? p.t.daddr : p.t.saddr;
	if (identity_of6(p.t.family, local) != IDENTITY_HOST)
		return TC_ACT_UNSPEC;
	if (flags & EP_LOCKDOWN && !proxied)
		return drop_event(skb, &p, R_DROP_LOCKDOWN, dir, id);

	ct_canon(&p);
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 rev = policy_rev();
	struct ct_value *ct = ct_lookup(&p, now);
	if (proxied) {
		if (!ct)
			ct_create(&p, VERDICT_ALLOW, 0, IDENTITY_HOST, rev, now);
		return count(skb, R_PASS_PROXY, dir, TC_ACT_OK);
	}
	if (ct) {
		if (ct_is_reply(&p, ct))
			return count(skb, R_PASS_REPLY, dir, TC_ACT_OK);
		if (ct->policy_rev == rev) {
			if (ct->verdict == VERDICT_REDIRECT && dir == DIR_EGRESS)
				return hairpin(skb, &p, ct->proxy_port, dir);
			return count(skb, R_PASS_ESTABLISHED, dir, TC_ACT_OK);
		}
	}
	__u32 *peer = dir == DIR_INGRESS ? p.t.saddr : p.t.daddr;
	return host_judge(skb, &p, ct, id, flags, dir, identity_of6(p.t.family, peer), rev, now);
}

SEC("tc")
int host_in(struct __sk_buff *skb)
{
	// A host query host_out handed to the DNS proxy (the mark cannot come
	// from the wire: a veth scrubs it when a packet crosses namespaces,
	// and a NIC's packets start without one).
	__u32 mark = skb->mark;
	if ((mark & MARK_MAGIC_MASK) == MARK_TO_PROXY && (mark >> 16))
		return from_hairpin(skb, mark);
	return host_packet(skb, DIR_INGRESS);
}

SEC("tc")
int host_out(struct __sk_buff *skb)
{
	return host_packet(skb, DIR_EGRESS);
}

#endif
