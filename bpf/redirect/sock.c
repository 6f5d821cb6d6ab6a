//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ward socket-level datapath, for workloads whose packets the node cannot
// see on a veth (host-network processes): cgroup hooks apply the
// workload's egress policy at connect/sendmsg time and point redirected
// sockets at the proxy on 127.0.0.1:<proxy port>; a sock_ops program
// records each redirected TCP connection's original destination under the
// client's (address, port), which a getsockopt hook attached to the proxy's
// cgroup returns for SO_ORIGINAL_DST, so Envoy's stock original_dst
// machinery works unchanged.
//
//   sock_connect4/6      cgroup/connect4/6 (TCP, connected UDP) on the workload cgroup
//   sock_sendmsg4/6      cgroup/sendmsg4/6 (unconnected UDP)
//   sock_recvmsg4/6      cgroup/recvmsg4/6: replies from the proxy appear to come
//                        from the original destination
//   sock_getpeername4/6  cgroup/getpeername4/6: same for getpeername
//   sock_ops           sockops: original-destination record at TCP connect
//   sock_getsockopt    cgroup/getsockopt on the proxy's cgroup: SO_ORIGINAL_DST

#include "datapath.h"
#include "events.h"

// shortcut_enabled turns the sockhash/sk_msg shortcut on (set at load).
volatile const __u8 shortcut_enabled = 0;

#define SOL_IP 0
#define SO_ORIGINAL_DST 80
#define LOCALHOST 0x7f000001

struct cgroup_ep {
	__u32 endpoint_id;
	__u32 identity;
	__u32 flags;
	__u32 pad;
};

struct sock_orig {
	__u32 ip;         // network order
	__u16 port;       // network order
	__u16 proxy_port; // host order
};

struct origdst_key {
	__u32 ip;   // client address, network order
	__u16 port; // client port, host order
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64); // cgroup id
	__type(value, struct cgroup_ep);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64); // socket cookie
	__type(value, struct sock_orig);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_sock_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct origdst_key);
	__type(value, struct sock_orig);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_origdst SEC(".maps");

// Local sockets of redirected connections (workload <-> proxy), keyed by
// their own (local, remote) ends with ports in host order; sk_msg
// programs move data from one straight into its peer's receive queue,
// skipping the loopback TCP/IP stack.
struct sock_key {
	__u32 sip;
	__u32 dip;
	__u32 sport;
	__u32 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ward_sockhash SEC(".maps");

#define SCOUNT(r) count_metric((__u32)(r) * 2 + DIR_EGRESS, 0)

// CG_TC_REDIRECT (cgroup_ep flags): the workload's packets cross a veth
// whose tc programs redirect to the proxies (wardd's socket mode for
// pods), so a connect/sendmsg the policy redirects is let through
// unchanged for tc to assign to the proxy (bpf_sk_assign keeps the
// original destination, IPv6 included); only verdicts are taken here.
#define CG_TC_REDIRECT 0x100

// CGROUP_MAX_LEVEL is the deepest cgroup level (the root is 0) whose
// ancestors are searched for a registered workload cgroup.
#define CGROUP_MAX_LEVEL 16

// cgroup_endpoint finds the workload the current task belongs to: the
// entry of its own cgroup or of its nearest registered ancestor (the
// hooks are attached to a registered cgroup and run for every
// descendant, so a process in a child cgroup is the workload's too).
static __always_inline struct cgroup_ep *cgroup_endpoint(void)
{
	__u64 cg = bpf_get_current_cgroup_id();
	struct cgroup_ep *ep = bpf_map_lookup_elem(&ward_cgroups, &cg);
	if (ep)
		return ep;
	for (int level = CGROUP_MAX_LEVEL; level >= 0; level--) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			continue;
		ep = bpf_map_lookup_elem(&ward_cgroups, &id);
		if (ep)
			return ep;
	}
	return 0;
}

#define OPT_ALLOW 1
#define OPT_DENY 0

// sock_drop_event reports a connect/sendmsg the hook denies, rate-limited
// as tc's drop events (the connection never makes a packet for tc to
// report). The source is the endpoint's: its address is not bound yet, so
// the event leaves it zero and the reader fills the endpoint's address.
static __always_inline void sock_drop_event(__u8 proto, __u8 family, const __u32 *addr, __u16 dport_n, enum reason r,
					    __u32 ep_id, __u32 dst_id)
{
	if (!events_enabled)
		return;
	__u32 h = mix32(ep_id, ((__u32)dport_n << 16) | ((__u32)r << 8) | (__u32)proto);
	h = mix32(h, family);
	h = mix32(h, addr[0]);
	h = mix32(h, addr[1]);
	h = mix32(h, addr[2]);
	h = mix32(h, addr[3]);
	if (!drop_rl_pass(h))
		return;
	struct flow_event e = {
		.dport = dport_n,
		.dst_identity = dst_id,
		.ep_id = ep_id,
		.type = EV_DROP,
		.reason = r,
		.verdict = VERDICT_DENY,
		.dir = DIR_EGRESS,
		.family = family,
		.proto = proto,
	};
	__builtin_memcpy(e.daddr, addr, 16);
	ev_output(&e);
}

// decide applies the workload's egress policy to a connect/sendmsg to
// (family, addr, dport_n). *redirect_to gets the proxy port for a
// redirect (the caller rewrites the address), 0 otherwise. The hooks run
// only in registered cgroups and their descendants: a task there without
// a (nearest ancestor's) entry is denied.
static __always_inline int decide(struct bpf_sock_addr *ctx, __u8 proto, __u8 family, const __u32 *addr,
				  __u16 dport_n, __u16 *redirect_to)
{
	*redirect_to = 0;
	struct cgroup_ep *ep = cgroup_endpoint();
	if (!ep) {
		SCOUNT(R_DROP_NO_ENDPOINT);
		sock_drop_event(proto, family, addr, dport_n, R_DROP_NO_ENDPOINT, 0, 0);
		return OPT_DENY;
	}
	if (ep->flags & EP_LOCKDOWN) {
		SCOUNT(R_DROP_LOCKDOWN);
		sock_drop_event(proto, family, addr, dport_n, R_DROP_LOCKDOWN, ep->endpoint_id, 0);
		return OPT_DENY;
	}
	if (!(ep->flags & EP_ENFORCE_EGRESS)) {
		SCOUNT(R_PASS_NOT_ENFORCED);
		return OPT_ALLOW;
	}
	__u16 proxy = 0;
	__u32 dst_id = identity_of6(family, addr);
	int v = policy_lookup(ep->endpoint_id, policy_dir(DIR_EGRESS, ep->flags), dst_id, bpf_ntohs(dport_n), proto, &proxy);
	if (v == VERDICT_ALLOW) {
		SCOUNT(R_PASS_ALLOWED);
		return OPT_ALLOW;
	}
	if (v != VERDICT_REDIRECT) {
		SCOUNT(R_DROP_POLICY);
		sock_drop_event(proto, family, addr, dport_n, R_DROP_POLICY, ep->endpoint_id, dst_id);
		return OPT_DENY; // EPERM to the application
	}
	if (ep->flags & CG_TC_REDIRECT) {
		SCOUNT(R_REDIRECT);
		return OPT_ALLOW;
	}
	if (family != AF_INET4) {
		// The proxy's original-destination plumbing is IPv4 only.
		SCOUNT(R_DROP_REDIRECT_UNSUPPORTED);
		sock_drop_event(proto, family, addr, dport_n, R_DROP_REDIRECT_UNSUPPORTED, ep->endpoint_id, dst_id);
		return OPT_DENY;
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_orig o = {.ip = addr[0], .port = dport_n, .proxy_port = proxy};
	bpf_map_update_elem(&ward_sock_orig, &cookie, &o, BPF_ANY);
	SCOUNT(R_REDIRECT);
	*redirect_to = proxy;
	return OPT_ALLOW;
}

static __always_inline int decide4(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u32 a[4] = {ctx->user_ip4, 0, 0, 0};
	__u16 proxy;
	if (decide(ctx, proto, AF_INET4, a, (__u16)ctx->user_port, &proxy) == OPT_DENY)
		return OPT_DENY;
	if (proxy) {
		ctx->user_ip4 = bpf_htonl(LOCALHOST);
		ctx->user_port = bpf_htons(proxy);
	}
	return OPT_ALLOW;
}

static __always_inline int is_v4mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
}

// decide6: an IPv4-mapped destination (::ffff:a.b.c.d, a dual-stack
// socket reaching an IPv4 peer) is decided as that IPv4 address.
static __always_inline int decide6(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 proxy;
	if (is_v4mapped(a[0], a[1], a[2])) {
		__u32 v4[4] = {a[3], 0, 0, 0};
		if (decide(ctx, proto, AF_INET4, v4, (__u16)ctx->user_port, &proxy) == OPT_DENY)
			return OPT_DENY;
		if (proxy) {
			ctx->user_ip6[3] = bpf_htonl(LOCALHOST);
			ctx->user_port = bpf_htons(proxy);
		}
		return OPT_ALLOW;
	}
	return decide(ctx, proto, AF_INET6, a, (__u16)ctx->user_port, &proxy);
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	return decide4(ctx, ctx->protocol);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return decide4(ctx, IPPROTO_UDP);
}

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	return decide6(ctx, ctx->protocol);
}

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return decide6(ctx, IPPROTO_UDP);
}

static __always_inline struct sock_orig *orig_of(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_orig *o = bpf_map_lookup_elem(&ward_sock_orig, &cookie);
	if (!o || (__u16)ctx->user_port != bpf_htons(o->proxy_port))
		return 0;
	return o;
}

static __always_inline int rev4(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 != bpf_htonl(LOCALHOST))
		return 1;
	struct sock_orig *o = orig_of(ctx);
	if (!o)
		return 1;
	ctx->user_ip4 = o->ip;
	ctx->user_port = o->port;
	return 1;
}

static __always_inline int rev6(struct bpf_sock_addr *ctx)
{
	if (!is_v4mapped(ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2]) || ctx->user_ip6[3] != bpf_htonl(LOCALHOST))
		return 1;
	struct sock_orig *o = orig_of(ctx);
	if (!o)
		return 1;
	ctx->user_ip6[3] = o->ip;
	ctx->user_port = o->port;
	return 1;
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return rev4(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return rev4(ctx);
}

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return rev6(ctx);
}

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return rev6(ctx);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	// IPv4, or a dual-stack socket connected to an IPv4-mapped address
	// (its local_ip4/remote_ip4 are the IPv4 ends).
	int mapped = skops->family == 10 && is_v4mapped(skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2]);
	if (skops->family != 2 && !mapped)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		// A redirected workload socket: record its original
		// destination under its own address for SO_ORIGINAL_DST.
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct sock_orig *o = bpf_map_lookup_elem(&ward_sock_orig, &cookie);
		if (!o)
			return 1;
		struct origdst_key k = {
			.ip = skops->local_ip4,
			.port = (__u16)skops->local_port,
			.proto = IPPROTO_TCP,
		};
		struct sock_orig v = *o;
		bpf_map_update_elem(&ward_origdst, &k, &v, BPF_ANY);
		return 1;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		__u64 cookie = bpf_get_socket_cookie(skops);
		if (!bpf_map_lookup_elem(&ward_sock_orig, &cookie))
			return 1;
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		// The proxy's side: its peer is a redirected workload socket.
		struct origdst_key k = {
			.ip = skops->remote_ip4,
			.port = bpf_ntohl(skops->remote_port) & 0xFFFF,
			.proto = IPPROTO_TCP,
		};
		if (!bpf_map_lookup_elem(&ward_origdst, &k))
			return 1;
		break;
	}
	default:
		return 1;
	}
	if (!shortcut_enabled || mapped)
		return 1;
	struct sock_key sk = {
		.sip = skops->local_ip4,
		.dip = skops->remote_ip4,
		.sport = skops->local_port,
		.dport = bpf_ntohl(skops->remote_port) & 0xFFFF,
	};
	bpf_sock_hash_update(skops, &ward_sockhash, &sk, BPF_ANY);
	return 1;
}

SEC("sk_msg")
int sock_msg(struct sk_msg_md *msg)
{
	if (msg->family != 2)
		return SK_PASS;
	struct sock_key peer = {
		.sip = msg->remote_ip4,
		.dip = msg->local_ip4,
		.sport = bpf_ntohl(msg->remote_port) & 0xFFFF,
		.dport = msg->local_port,
	};
	if (bpf_msg_redirect_hash(msg, &ward_sockhash, &peer, BPF_F_INGRESS) == SK_PASS)
		count_metric(R_SHORTCUT * 2 + DIR_EGRESS, msg->size);
	return SK_PASS;
}

SEC("cgroup/getsockopt")
int sock_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct origdst_key k = {
		.ip = sk->dst_ip4,
		.port = bpf_ntohs(sk->dst_port),
		.proto = IPPROTO_TCP,
	};
	struct sock_orig *o = bpf_map_lookup_elem(&ward_origdst, &k);
	if (!o)
		return 1;
	struct sockaddr_in *sin = ctx->optval;
	if ((void *)(sin + 1) > ctx->optval_end)
		return 1;
	sin->sin_family = 2;
	sin->sin_port = o->port;
	sin->sin_addr.s_addr = o->ip;
	ctx->optlen = sizeof(*sin);
	// Keep clang from merging the two 4-byte context stores into one
	// 8-byte store, which the verifier rejects.
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
