package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Mirrors of the C constants in redirect.c.
const (
	afInet  = 2
	afInet6 = 10

	epEnforceIngress = 1
	epEnforceEgress  = 2
	epLockdown       = 4
	epPolicyGen      = 8
	epAudit          = 16
)

// Marks the datapath and the proxies agree on (see redirect.c).
const (
	// MarkToProxy is set on packets handed to a proxy socket; the routing
	// rule installed by InstallProxyRouting delivers them locally.
	MarkToProxy = 0x0D00
	// MarkMask selects the magic part of a mark.
	MarkMask = 0x0F00
	// MarkProxyIngress marks an ingress proxy's upstream sockets: the
	// destination's ingress policy was already applied by the proxy.
	MarkProxyIngress = 0x0A00
	// MarkProxyEgress marks an egress proxy's upstream sockets; use
	// ProxyEgressMark to pack the source identity in.
	MarkProxyEgress = 0x0B00
	// MarkIngressChecked, on an egress proxy's upstream, says the proxy
	// also applied a local destination's ingress L7 rules (the egress
	// listeners of ward.http and ward.kafka with the generic parsers do):
	// the destination's ingress redirect passes.
	MarkIngressChecked = 0x1000
)

// ProxyEgressMark is the SO_MARK an egress proxy sets on its upstream
// socket so the destination's ingress policy sees the original source
// identity (Cilium's layout, which its Envoy filters use).
func ProxyEgressMark(identity uint32) uint32 {
	return MarkProxyEgress | (identity>>16)&0xFF | (identity&0xFFFF)<<16
}

// CheckKernel reports, by name, every kernel feature the datapath needs
// and lacks; nil when all are present.
func CheckKernel() error {
	var errs []error
	check := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	check("program type sched_cls", features.HaveProgramType(ebpf.SchedCLS))
	check("map type lpm_trie", features.HaveMapType(ebpf.LPMTrie))
	check("map type lru_hash", features.HaveMapType(ebpf.LRUHash))
	check("helper bpf_sk_assign (Linux 5.7+)", features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkAssign))
	check("helper bpf_skc_lookup_tcp", features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkcLookupTcp))
	check("helper bpf_sk_lookup_udp", features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkLookupUdp))
	check("helper bpf_ktime_get_coarse_ns (Linux 5.11+)", features.HaveProgramHelper(ebpf.SchedCLS, asm.FnKtimeGetCoarseNs))
	check("helper bpf_get_current_ancestor_cgroup_id", features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetCurrentAncestorCgroupId))
	if err := errors.Join(errs...); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("kernel check: permission denied: needs CAP_BPF and CAP_NET_ADMIN (run as root): %w", err)
		}
		return fmt.Errorf("kernel check: missing: %w; ward refuses to claim enforcement", err)
	}
	return nil
}

func addrWords(a netip.Addr) (family uint8, w [4]uint32) {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		w[0] = binary.NativeEndian.Uint32(b[:])
		return afInet, w
	}
	b := a.As16()
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return afInet6, w
}

func wordsAddr(family uint8, w [4]uint32) netip.Addr {
	if family == afInet {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], w[0])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[i*4:], w[i])
	}
	return netip.AddrFrom16(b)
}

// IPCache is the prefix -> security identity map (LPM trie). Longest prefix
// wins; an address without an entry is WORLD (2). Safe for concurrent use.
type IPCache struct {
	m *ebpf.Map
}

func ipcacheKey(p netip.Prefix) (datapathIpcacheKey, error) {
	if !p.IsValid() {
		return datapathIpcacheKey{}, fmt.Errorf("invalid prefix %v", p)
	}
	p = p.Masked()
	fam, w := addrWords(p.Addr())
	return datapathIpcacheKey{Prefixlen: 32 + uint32(p.Bits()), Family: fam, Addr: w}, nil
}

// Upsert maps prefix to identity, replacing any previous identity in place.
func (c *IPCache) Upsert(prefix netip.Prefix, identity uint32) error {
	if identity == 0 {
		return fmt.Errorf("ipcache upsert %s: identity 0 is not valid", prefix)
	}
	k, err := ipcacheKey(prefix)
	if err != nil {
		return fmt.Errorf("ipcache upsert: %w", err)
	}
	if err := c.m.Update(&k, &datapathIpcacheValue{Identity: identity}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("ipcache upsert %s: %w", prefix, err)
	}
	return nil
}

// Delete removes prefix; a missing prefix is not an error.
func (c *IPCache) Delete(prefix netip.Prefix) error {
	k, err := ipcacheKey(prefix)
	if err != nil {
		return fmt.Errorf("ipcache delete: %w", err)
	}
	if err := c.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache delete %s: %w", prefix, err)
	}
	return nil
}

// Lookup returns the identity the datapath resolves addr to, and whether an
// entry matched (false means WORLD).
func (c *IPCache) Lookup(addr netip.Addr) (uint32, bool) {
	k, err := ipcacheKey(netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen()))
	if err != nil {
		return 0, false
	}
	var v datapathIpcacheValue
	if err := c.m.Lookup(&k, &v); err != nil {
		return IdentityWorld, false
	}
	return v.Identity, true
}

// Reserved identities the datapath knows (the seed's numbering).
const (
	IdentityHost  = 1
	IdentityWorld = 2
)

// Endpoint is one local workload whose veth carries the tc programs.
type Endpoint struct {
	// ID is the endpoint id (non-zero, unique on the node).
	ID uint32
	// IP is the endpoint's IPv4 address.
	IP netip.Addr
	// IPv6 is the endpoint's IPv6 address, if it has one.
	IPv6 netip.Addr
	// IfIndex is the host-side veth's ifindex in wardd's namespace.
	IfIndex int
	// Identity is the endpoint's security identity.
	Identity uint32
	// EnforceIngress and EnforceEgress turn default-deny on for the
	// direction (some policy selects the endpoint there).
	EnforceIngress, EnforceEgress bool
	// Audit is policy audit mode: a new flow the endpoint's policy would
	// drop passes and is reported as audited (a verdict event, see
	// Events). Lockdown still drops everything.
	Audit bool
}

func (ep Endpoint) flags(locked bool) uint32 {
	var f uint32
	if ep.EnforceIngress {
		f |= epEnforceIngress
	}
	if ep.EnforceEgress {
		f |= epEnforceEgress
	}
	if locked {
		f |= epLockdown
	}
	if ep.Audit {
		f |= epAudit
	}
	return f
}

func endpointFromMap(k datapathEndpointKey, v datapathEndpointInfo) Endpoint {
	return Endpoint{
		ID:             v.Id,
		IfIndex:        int(v.Ifindex),
		Identity:       v.Identity,
		EnforceIngress: v.Flags&epEnforceIngress != 0,
		EnforceEgress:  v.Flags&epEnforceEgress != 0,
		Audit:          v.Flags&epAudit != 0,
	}
}

// Endpoints returns the endpoints in the (pinned) endpoint map, including
// those added before a restart.
func (d *Datapath) Endpoints() []Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Endpoint, 0, len(d.eps))
	for _, ep := range d.eps {
		out = append(out, ep)
	}
	return out
}

// Locked reports whether an endpoint is in lockdown.
func (d *Datapath) Locked(id uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.locked[id]
}

// addrs returns the endpoint's addresses with their host prefixes.
func (ep Endpoint) addrs() []netip.Prefix {
	out := []netip.Prefix{netip.PrefixFrom(ep.IP, 32)}
	if ep.IPv6.IsValid() {
		out = append(out, netip.PrefixFrom(ep.IPv6, 128))
	}
	return out
}

func (d *Datapath) writeEndpoint(ep Endpoint) error {
	v := datapathEndpointInfo{Id: ep.ID, Ifindex: uint32(ep.IfIndex), Identity: ep.Identity, Flags: ep.flags(d.locked[ep.ID]) | d.genFlag(ep.ID)}
	for _, a := range ep.addrs() {
		fam, w := addrWords(a.Addr())
		k := datapathEndpointKey{Family: fam, Addr: w}
		if err := d.objs.WardEndpoints.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("endpoint map update %d: %w", ep.ID, err)
		}
	}
	return nil
}

// AddEndpoint registers (or updates) an endpoint and attaches the programs
// to its veth: the endpoint map entry and its /32 ipcache identity are
// written first, then the tcx links are created (or, when they already
// exist, e.g. pinned by a previous run, their programs are swapped
// atomically). Write the endpoint's policy with SetPolicy before enforcing.
func (d *Datapath) AddEndpoint(ep Endpoint) error {
	if ep.ID == 0 {
		return errors.New("add endpoint: id 0 is reserved")
	}
	if !ep.IP.Unmap().Is4() {
		return fmt.Errorf("add endpoint %d: IP must be IPv4 (put an IPv6 address in IPv6), got %v", ep.ID, ep.IP)
	}
	if ep.IfIndex <= 0 {
		return fmt.Errorf("add endpoint %d: invalid ifindex %d", ep.ID, ep.IfIndex)
	}
	if ep.Identity == 0 {
		return fmt.Errorf("add endpoint %d: identity 0 is not valid", ep.ID)
	}
	ep.IP = ep.IP.Unmap()
	if ep.IPv6.IsValid() && !ep.IPv6.Is6() {
		return fmt.Errorf("add endpoint %d: IPv6 %v is not an IPv6 address", ep.ID, ep.IPv6)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old, exists := d.eps[ep.ID]
	if exists && old.IP != ep.IP {
		return fmt.Errorf("add endpoint %d: already registered with %s", ep.ID, old.IP)
	}
	if exists && old.IfIndex != ep.IfIndex {
		// The endpoint's veth was replaced: drop the old links.
		for _, ingress := range []bool{true, false} {
			if err := d.detach(linkName(old.IfIndex, ingress)); err != nil {
				return fmt.Errorf("add endpoint %d: detach old interface: %w", ep.ID, err)
			}
		}
	}
	for _, a := range ep.addrs() {
		if err := d.ipc.Upsert(a, ep.Identity); err != nil {
			return fmt.Errorf("add endpoint %d: %w", ep.ID, err)
		}
	}
	if err := d.writeEndpoint(ep); err != nil {
		return fmt.Errorf("add endpoint: %w", err)
	}
	if exists && old.IPv6.IsValid() && old.IPv6 != ep.IPv6 {
		// Its IPv6 address changed or went: the old one is no longer
		// the endpoint's (source check, ingress lookups).
		if err := d.forgetAddr(ep.ID, netip.PrefixFrom(old.IPv6, 128), false); err != nil {
			return fmt.Errorf("add endpoint %d: old IPv6 %s: %w", ep.ID, old.IPv6, err)
		}
	}
	if !exists || old.EnforceIngress != ep.EnforceIngress || old.EnforceEgress != ep.EnforceEgress || old.Audit != ep.Audit {
		// Flows admitted while a direction was not enforced, or in
		// audit mode, are decided again.
		if err := d.bumpPolicyRev(); err != nil {
			return fmt.Errorf("add endpoint %d: %w", ep.ID, err)
		}
	}
	d.eps[ep.ID] = ep
	if err := acceptLocal(ep.IfIndex); err != nil {
		return fmt.Errorf("add endpoint %d: %w", ep.ID, err)
	}
	for _, ingress := range []bool{true, false} {
		if err := d.attach(ep.IfIndex, ingress); err != nil {
			return fmt.Errorf("add endpoint %d: %w", ep.ID, err)
		}
	}
	return nil
}

// acceptLocal sets the veth's accept_local: a flow from the host to the
// pod that is hairpinned to the proxy (to_pod -> the veth's ingress)
// arrives with one of the host's own addresses as its source, which the
// stack otherwise drops as martian (fib_validate_source). Per device only.
func acceptLocal(ifindex int) error {
	ifc, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("accept_local: interface %d: %w", ifindex, err)
	}
	path := filepath.Join("/proc/sys/net/ipv4/conf", ifc.Name, "accept_local")
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("accept_local: %w", err)
	}
	return nil
}

func (d *Datapath) attach(ifindex int, ingress bool) error {
	prog, at := d.objs.FromPod, ebpf.AttachTCXIngress
	if !ingress {
		prog, at = d.objs.ToPod, ebpf.AttachTCXEgress
	}
	return d.attachTCX(linkName(ifindex, ingress), ifindex, prog, at)
}

// attachTCX attaches prog to the interface under the pinned link name, or
// swaps it into the existing link. Called with d.mu.
func (d *Datapath) attachTCX(name string, ifindex int, prog *ebpf.Program, at ebpf.AttachType) error {
	if l, ok := d.links[name]; ok {
		if err := l.Update(prog); err != nil {
			return fmt.Errorf("update tcx link %s: %w", name, err)
		}
		return nil
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("attach tcx ifindex %d: tcx links need Linux 6.6+: %w", ifindex, err)
		}
		return fmt.Errorf("attach tcx ifindex %d: %w", ifindex, err)
	}
	dir := filepath.Join(d.cfg.PinDir, "links")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		l.Close()
		return fmt.Errorf("pin dir: %w", err)
	}
	if err := l.Pin(filepath.Join(dir, name)); err != nil {
		l.Close()
		return fmt.Errorf("pin tcx link %s: %w", name, err)
	}
	d.links[name] = l
	return nil
}

// forgetAddr deletes endpoint id's endpoint-map and conntrack entries of
// an address, and its ipcache entry when ipcache is set. An address
// another endpoint holds by now (its entry names another id) is left
// alone; so is the ipcache of a changed address, whose owner (the agent's
// ipcache table) reconciles it. Called with d.mu.
func (d *Datapath) forgetAddr(id uint32, a netip.Prefix, ipcache bool) error {
	var errs []error
	fam, w := addrWords(a.Addr())
	k := datapathEndpointKey{Family: fam, Addr: w}
	var v datapathEndpointInfo
	if err := d.objs.WardEndpoints.Lookup(&k, &v); err == nil && v.Id != id {
		return nil
	}
	if err := d.objs.WardEndpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("endpoint map delete: %w", err))
	}
	if ipcache {
		if err := d.ipc.Delete(a); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, d.flushCT(a.Addr()))
	return errors.Join(errs...)
}

// RemoveEndpoint detaches the programs from the endpoint's veth and deletes
// its endpoint, ipcache, policy and conntrack entries. Unknown ids are not
// an error.
func (d *Datapath) RemoveEndpoint(id uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.eps[id]
	if !ok {
		return nil
	}
	var errs []error
	for _, ingress := range []bool{true, false} {
		errs = append(errs, d.detach(linkName(ep.IfIndex, ingress)))
	}
	for _, a := range ep.addrs() {
		errs = append(errs, d.forgetAddr(id, a, true))
	}
	errs = append(errs, d.deletePolicy(id))
	delete(d.locked, id)
	delete(d.eps, id)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove endpoint %d: %w", id, err)
	}
	return nil
}

// flushCT deletes the conntrack entries with addr at either end.
func (d *Datapath) flushCT(addr netip.Addr) error {
	fam, w := addrWords(addr)
	var (
		k    datapathCtKey
		v    datapathCtValue
		dead []datapathCtKey
	)
	it := d.objs.WardCt.Iterate()
	for it.Next(&k, &v) {
		if k.Family == fam && (k.Saddr == w || k.Daddr == w) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("conntrack flush: %w", err)
	}
	for i := range dead {
		if err := d.objs.WardCt.Delete(&dead[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("conntrack flush: %w", err)
		}
	}
	return nil
}

// AttachedPrograms counts the tcx programs (ward's or anyone's) attached
// to an interface, ingress plus egress.
func AttachedPrograms(ifindex int) (int, error) {
	n := 0
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		r, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err != nil {
			return 0, fmt.Errorf("query tcx ifindex %d: %w", ifindex, err)
		}
		n += len(r.Programs)
	}
	return n, nil
}
