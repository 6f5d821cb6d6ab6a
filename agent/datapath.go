package agent

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wardproxy/ward/agent/ipcache"
	"github.com/wardproxy/ward/bpf/policymap"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
	l7kind "github.com/wardproxy/ward/policy/l7"
)

// datapath is the Consumer that writes each state into the eBPF datapath:
// identities of every workload address and CIDR into the ipcache, then each
// local endpoint's policy, then the endpoint itself (programs attached on
// first sight).
type datapath struct {
	cfg DatapathConfig
	dp  *redirect.Datapath
	// w receives the endpoint writes (dp; the scale benchmark substitutes
	// one without kernel writes) and ifindex looks interfaces up
	// (net.InterfaceByName).
	w       policyWriter
	cg      cgroupWriter // socket mode's hooks (dp); nil: not available
	ifindex func(name string) (int, error)
	log     *slog.Logger
	ipc     *ipcache.Table // the one writer of the BPF ipcache
	// remote and apiserver are the static node claims' sources (the
	// agent's, parsed once): remoteNodes, kubeAPIServer; the nodes' come
	// with each State.
	remote    []netip.Prefix
	apiserver []netip.Prefix

	mu sync.Mutex
	// Each local endpoint has a slot, the offset of its egress listeners
	// from their base ports; a slot is reused once its endpoint is gone.
	slots    map[uint64]int
	freed    slotHeap          // released slots, lowest first
	nslots   int               // slots ever handed out: the next new one
	egress   map[uint64]uint16 // endpoint id -> its egress HTTP listener port
	kafka    map[uint64]uint16 // endpoint id -> its egress Kafka listener port
	attached map[uint64]bool   // endpoints in the datapath
	// applied is what the last successful write of each endpoint was
	// made from: a publish that does not change an endpoint's resolved
	// policy (the snapshot hands out the same pointer), interface or
	// address writes nothing for it, so a change touching one endpoint
	// rewrites only that endpoint (and re-decides only its flows).
	applied map[uint64]appliedEndpoint
	epErrs  map[uint64]error    // per local endpoint, from the last Apply
	events  redirect.EventStats // the flow events read (bpfevents.go)
	host    hostState           // the host firewall's endpoint (hostfw.go)
	// synced is what the ipcache's endpoint and CIDR claims were last
	// synced from without an error (nil: not yet, or that sync failed).
	// Apply alone uses it (the engine publishes one state at a time).
	synced *ipcacheInputs
}

// policyWriter is the part of the BPF datapath Apply writes endpoints to.
type policyWriter interface {
	SetPolicy(endpointID uint32, entries []redirect.PolicyEntry) error
	AddEndpoint(ep redirect.Endpoint) error
	RemoveEndpoint(id uint32) error
	Lockdown(endpointID uint32) error
}

var _ policyWriter = (*redirect.Datapath)(nil)

// cgroupWriter is the part of the BPF datapath socket mode writes
// endpoints' cgroup entries to.
type cgroupWriter interface {
	AddCgroupEndpoint(ep redirect.CgroupEndpoint) error
	RemoveCgroupEndpoint(id uint32) error
}

var _ cgroupWriter = (*redirect.Datapath)(nil)

type appliedEndpoint struct {
	pol     *policy.EndpointPolicy
	ifindex int
	v4, v6  netip.Addr
	cgroup  string // socket mode: the cgroup its hooks are attached to
}

// ipcacheInputs is what one ipcache sync was made from: each workload's
// addresses and identity in the state's order, the node claims and the
// CIDR identities.
type ipcacheInputs struct {
	eps   []ipcacheEndpoint
	nodes map[netip.Prefix]uint32
	cidrs []ipcacheCIDR
}

type ipcacheEndpoint struct {
	id       uint64
	identity policy.NumericIdentity
	addrs    []netip.Addr
}

type ipcacheCIDR struct {
	prefix   netip.Prefix
	identity policy.NumericIdentity
}

func newIPCacheInputs(ws []Workload, snap *policy.Snapshot, nodes map[netip.Prefix]uint32, cidrs []*policy.Identity) *ipcacheInputs {
	in := &ipcacheInputs{eps: make([]ipcacheEndpoint, 0, len(ws)), nodes: nodes, cidrs: make([]ipcacheCIDR, len(cidrs))}
	for _, w := range ws {
		if pol, ok := snap.Endpoint(w.ID); ok {
			in.eps = append(in.eps, ipcacheEndpoint{id: w.ID, identity: pol.Identity, addrs: slices.Clone(w.Addrs)})
		}
	}
	for i, c := range cidrs {
		in.cidrs[i] = ipcacheCIDR{prefix: c.Prefix, identity: c.ID}
	}
	return in
}

// same reports whether a sync from these inputs would claim exactly what
// the recorded one did: the same workloads (with a policy) in the same
// order with the same addresses and identities, the same node claims and
// CIDR identities. It allocates nothing.
func (in *ipcacheInputs) same(ws []Workload, snap *policy.Snapshot, nodes map[netip.Prefix]uint32, cidrs []*policy.Identity) bool {
	if !maps.Equal(in.nodes, nodes) || !slices.EqualFunc(cidrs, in.cidrs, func(c *policy.Identity, r ipcacheCIDR) bool {
		return c.Prefix == r.prefix && c.ID == r.identity
	}) {
		return false
	}
	k := 0
	for _, w := range ws {
		pol, ok := snap.Endpoint(w.ID)
		if !ok {
			continue
		}
		if k >= len(in.eps) {
			return false
		}
		e := &in.eps[k]
		k++
		if e.id != w.ID || e.identity != pol.Identity || !slices.Equal(e.addrs, w.Addrs) {
			return false
		}
	}
	return k == len(in.eps)
}

// endpointAddrs picks a workload's addresses for the datapath: its first
// IPv4 and first IPv6 address (a dual-stack endpoint has one of each).
// The tc datapath keys an endpoint by its IPv4 address, so an endpoint
// with IPv6 only is refused (errIPv6Only); one without addresses has
// neither.
func endpointAddrs(addrs []netip.Addr) (v4, v6 netip.Addr, err error) {
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case a.Is4() && !v4.IsValid():
			v4 = a
		case a.Is6() && !v6.IsValid():
			v6 = a
		}
	}
	if v6.IsValid() && !v4.IsValid() {
		return v4, v6, errIPv6Only
	}
	return v4, v6, nil
}

// errIPv6Only: an endpoint has IPv6 addresses only.
var errIPv6Only = errors.New("an endpoint needs an IPv4 address besides its IPv6 one (IPv6-only endpoints are not supported)")

func interfaceIndex(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}

// assign gives a local endpoint its slot (and egress ports) if it has none.
func (d *datapath) assign(id uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.slots[id]; ok {
		return
	}
	// The lowest free slot, in O(log n): 10,000 endpoints arriving at
	// once must not cost a scan of every slot each.
	n := d.nslots
	if d.freed.Len() > 0 {
		n = heap.Pop(&d.freed).(int)
	} else {
		d.nslots++
	}
	d.slots[id] = n
	d.egress[id] = d.cfg.EgressHTTPBasePort + uint16(n)
	d.kafka[id] = d.cfg.EgressKafkaBasePort + uint16(n)
}

// slotHeap is a min-heap of slots (container/heap).
type slotHeap []int

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h slotHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *slotHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *slotHeap) Pop() any {
	old := *h
	n := old[len(old)-1]
	*h = old[:len(old)-1]
	return n
}

// release frees a gone endpoint's slot.
func (d *datapath) release(id uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n, ok := d.slots[id]; ok {
		heap.Push(&d.freed, n)
	}
	delete(d.slots, id)
	delete(d.egress, id)
	delete(d.kafka, id)
}

var _ Consumer = (*datapath)(nil)

// openDatapath loads the programs and installs the proxy routing.
// Endpoints come and go with each State; their interfaces are looked up
// when they are applied.
func openDatapath(cfg DatapathConfig, log *slog.Logger) (*datapath, error) {
	d := &datapath{cfg: cfg, log: log, slots: map[uint64]int{}, egress: map[uint64]uint16{}, kafka: map[uint64]uint16{}, attached: map[uint64]bool{}, epErrs: map[uint64]error{},
		applied: map[uint64]appliedEndpoint{}, ifindex: interfaceIndex}
	if cfg.DisableTCPEarlyDemux {
		if err := disableTCPEarlyDemux(); err != nil {
			return nil, err
		}
	}
	dp, err := redirect.Load(redirect.Config{PinDir: cfg.PinDir, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("datapath: %w (wardd does not claim enforcement without it)", err)
	}
	// Installed or adopted; left in place by Close.
	_, err = redirect.InstallProxyRouting(redirect.Routing{Table: cfg.RoutingTable, Priority: cfg.RoutingPriority})
	if err != nil {
		dp.Close()
		return nil, err
	}
	d.dp, d.w, d.cg = dp, dp, dp
	for i, name := range cfg.Devices {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			err = dp.AttachDevice(ifc.Index)
		}
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("datapath.devices[%d] %q: %w", i, name, err)
		}
	}
	// Over pinned maps, what the previous run wrote is adopted so that it
	// can be pruned once every owner has claimed its prefixes again.
	d.ipc = ipcache.New(dp.IPCache())
	if old, err := dp.IPCache().Entries(); err != nil {
		log.Warn("ipcache adopt", "error", err)
	} else if err := d.ipc.Adopt(old); err != nil {
		log.Warn("ipcache adopt", "error", err)
	}
	return d, nil
}

// Close detaches nothing and removes nothing: pinned programs keep
// enforcing and the proxy routing rule stays, so an Envoy that outlives
// the agent (KeepRunning, or a crash of wardd) keeps receiving the flows
// redirected to it; the next agent adopts both. `ward bpf cleanup` removes
// them. It closes the handles.
func (d *datapath) Close() error {
	return d.dp.Close()
}

// egressPort is the egress HTTP listener port of a local endpoint.
func (d *datapath) egressPort(ep uint64) (uint16, bool) {
	if d == nil {
		return 0, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.egress[ep]
	return p, ok
}

// egressKafkaPort is the egress Kafka listener port of a local endpoint.
func (d *datapath) egressKafkaPort(ep uint64) (uint16, bool) {
	if d == nil {
		return 0, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.kafka[ep]
	return p, ok
}

// proxyPort names the listener for a proxied port of endpoint ep; 0 (no
// proxy: the flow is dropped, never let through unchecked) for a kind
// without a listener in that direction.
func (d *datapath) proxyPort(ep uint64, dir policy.Direction, l7 *policy.L7Port) uint16 {
	if l7.Kind == l7kind.KindDNS {
		return d.cfg.DNSPort
	}
	if isTLSPort(l7) {
		return d.tlsPort(ep, dir)
	}
	if dir != policy.Ingress {
		switch l7.Kind {
		case l7kind.KindHTTP:
			p, _ := d.egressPort(ep)
			return p
		case l7kind.KindKafka, l7kind.KindGeneric:
			// The TCP stream listeners: ward.kafka runs the Kafka
			// parser or the port's generic (l7proto) one.
			p, _ := d.egressKafkaPort(ep)
			return p
		}
		return 0
	}
	switch l7.Kind {
	case l7kind.KindHTTP:
		return d.cfg.HTTPIngressPort
	case l7kind.KindKafka, l7kind.KindGeneric:
		return d.cfg.KafkaIngressPort
	}
	return 0
}

// endpointError is the datapath error of a local endpoint after the last
// Apply (nil when its policy is in force).
func (d *datapath) endpointError(id uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.epErrs[id]
}

// Apply implements Consumer: the endpoint and CIDR claims of the ipcache
// are reconciled with the state (a prefix no rule names any more is
// deleted), then every local endpoint's policy is written. An endpoint
// whose policy cannot be produced or written is locked down (all its
// traffic dropped) until a later Apply succeeds for it: never left with a
// stale policy, never skipped.
func (d *datapath) Apply(_ context.Context, st *State) error {
	var errs []error
	snap := st.Policy
	nodes, nodesErr := nodeClaims(d.remote, d.apiserver, healthPrefixes(d.cfg), st.Nodes)
	if nodesErr != nil {
		errs = append(errs, nodesErr)
	}
	cidrIDs := snap.CIDRIdentities()
	// The ipcache is synced only when its inputs differ from the last
	// successful sync's, or a write of the table (any owner's) failed
	// since: a policy change that moves no address and no identity
	// writes nothing there, and re-deciding 10,000 claims is skipped.
	if d.synced == nil || d.ipc.Failed() || !d.synced.same(st.Workloads, snap, nodes, cidrIDs) {
		d.synced = nil
		eps := map[netip.Prefix]uint32{}
		for _, w := range st.Workloads {
			pol, ok := snap.Endpoint(w.ID)
			if !ok {
				continue
			}
			for _, a := range w.Addrs {
				eps[netip.PrefixFrom(a, a.BitLen())] = uint32(pol.Identity)
			}
		}
		addNodeClaims(eps, nodes)
		cidrs := map[netip.Prefix]uint32{}
		for _, c := range cidrIDs {
			if c.Prefix.IsValid() {
				cidrs[c.Prefix] = uint32(c.ID)
			}
		}
		if err := errors.Join(d.ipc.Owner(ipcache.Endpoint).Sync(eps), d.ipc.Owner(ipcache.CIDR).Sync(cidrs)); err != nil {
			errs = append(errs, fmt.Errorf("ipcache: %w", err))
			if err := d.ipc.Resync(); err != nil {
				errs = append(errs, fmt.Errorf("ipcache resync: %w", err))
			}
		} else if nodesErr == nil {
			d.synced = newIPCacheInputs(st.Workloads, snap, nodes, cidrIDs)
		}
	}
	if err := d.applyHost(snap); err != nil {
		errs = append(errs, err)
	}
	epErrs := map[uint64]error{}
	local := map[uint64]bool{}
	for _, w := range st.Workloads {
		if w.Remote {
			continue
		}
		local[w.ID] = true
		d.assign(w.ID)
		if err := d.applyEndpoint(snap, w); err != nil {
			err = fmt.Errorf("endpoint %s: %w", w.Name, err)
			d.mu.Lock()
			delete(d.applied, w.ID)
			d.mu.Unlock()
			if lerr := d.w.Lockdown(uint32(w.ID)); lerr != nil {
				err = errors.Join(err, fmt.Errorf("lockdown: %w", lerr))
			}
			epErrs[w.ID] = err
			errs = append(errs, err)
		}
	}
	// Endpoints gone from the state leave the datapath (their programs,
	// entry and policy), and their slot is freed.
	d.mu.Lock()
	var gone []uint64
	for id := range d.slots {
		if !local[id] {
			gone = append(gone, id)
		}
	}
	d.mu.Unlock()
	for _, id := range gone {
		if d.cg != nil {
			if err := d.cg.RemoveCgroupEndpoint(uint32(id)); err != nil {
				errs = append(errs, fmt.Errorf("remove endpoint %d: %w", id, err))
				continue
			}
		}
		if err := d.w.RemoveEndpoint(uint32(id)); err != nil {
			errs = append(errs, fmt.Errorf("remove endpoint %d: %w", id, err))
			continue
		}
		d.release(id)
		d.mu.Lock()
		delete(d.attached, id)
		delete(d.applied, id)
		d.mu.Unlock()
	}
	d.mu.Lock()
	d.epErrs = epErrs
	d.mu.Unlock()
	return errors.Join(errs...)
}

// runGC expires conntrack entries (per-protocol lifetimes) until ctx is
// done.
func (d *datapath) runGC(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n, err := d.dp.GC(); err != nil {
			d.log.Warn("conntrack gc", "error", err)
		} else if n > 0 {
			d.log.Debug("conntrack gc", "expired", n)
		}
	}
}

func (d *datapath) applyEndpoint(snap *policy.Snapshot, w Workload) error {
	pol, ok := snap.Endpoint(w.ID)
	if !ok {
		return nil
	}
	v4, v6, err := endpointAddrs(w.Addrs)
	if err != nil {
		return err
	}
	ifindex, ifErr := 0, error(nil)
	if v4.IsValid() {
		ifindex, ifErr = d.ifindex(w.Interface)
	}
	d.mu.Lock()
	prev, done := d.applied[w.ID]
	d.mu.Unlock()
	cgroup := ""
	if d.cfg.Mode == ModeSocket {
		cgroup = w.Cgroup
	}
	if done && ifErr == nil && prev == (appliedEndpoint{pol: pol, ifindex: ifindex, v4: v4, v6: v6, cgroup: cgroup}) {
		return nil // unchanged since its last successful write
	}
	ports := func(dir policy.Direction, l7 *policy.L7Port) uint16 { return d.proxyPort(w.ID, dir, l7) }
	in, err := policymap.Entries(policy.Ingress, pol.Ingress, ports)
	if err != nil {
		return err
	}
	if pol.Ingress != nil && pol.Ingress.Enforced && d.cfg.allowLocalhost() {
		in = allowLocalhost(in)
	}
	out, err := policymap.Entries(policy.Egress, pol.Egress, ports)
	if err != nil {
		return err
	}
	if err := d.w.SetPolicy(uint32(w.ID), append(in, out...)); err != nil {
		return err
	}
	if !v4.IsValid() {
		d.mu.Lock()
		d.applied[w.ID] = appliedEndpoint{pol: pol}
		d.mu.Unlock()
		return nil
	}
	if ifErr != nil {
		// Not attached: until the interface exists no traffic of the
		// endpoint can pass the node; its policy is in place for then.
		return fmt.Errorf("%w: interface %q: %w", errNoInterface, w.Interface, ifErr)
	}
	if err := d.w.AddEndpoint(redirect.Endpoint{ID: uint32(w.ID), IP: v4, IPv6: v6, IfIndex: ifindex, Identity: uint32(pol.Identity),
		EnforceIngress: policymap.Enforce(pol.Ingress), EnforceEgress: policymap.Enforce(pol.Egress), Audit: pol.Audit}); err != nil {
		return err
	}
	if d.cfg.Mode == ModeSocket {
		// After tc: its entry carries the generation and lockdown
		// flags the cgroup entry shares.
		if err := d.addCgroupEndpoint(w, pol, cgroup); err != nil {
			return err
		}
	}
	d.mu.Lock()
	d.attached[w.ID] = true
	d.applied[w.ID] = appliedEndpoint{pol: pol, ifindex: ifindex, v4: v4, v6: v6, cgroup: cgroup}
	d.mu.Unlock()
	return nil
}

// waiting reports whether a local endpoint waits for its interface.
func (d *datapath) waiting() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, err := range d.epErrs {
		if errors.Is(err, errNoInterface) {
			return true
		}
	}
	return false
}

// errNoInterface: a local endpoint's interface does not exist (yet).
var errNoInterface = errors.New("waiting for its interface")

// addCgroupEndpoint attaches socket mode's hooks to a local endpoint's
// cgroup under the endpoint's own ID (its policy, lockdown and generation
// shared with its tc entry): egress verdicts at connect/sendmsg, redirects
// left to tc (CgroupEndpoint.TCRedirect). In audit mode nothing is denied
// at the socket; tc records the would-be drops.
func (d *datapath) addCgroupEndpoint(w Workload, pol *policy.EndpointPolicy, cgroup string) error {
	if cgroup == "" {
		return errNoCgroup
	}
	if d.cg == nil {
		return errors.New("socket mode: the datapath has no socket-level hooks")
	}
	return d.cg.AddCgroupEndpoint(redirect.CgroupEndpoint{ID: uint32(w.ID), CgroupPath: cgroup, Identity: uint32(pol.Identity),
		EnforceEgress: policymap.Enforce(pol.Egress) && !pol.Audit, TCRedirect: true})
}

// errNoCgroup: a local endpoint has no cgroup in socket mode.
var errNoCgroup = errors.New("datapath.mode socket needs the endpoint's cgroup (endpoint field cgroup)")
