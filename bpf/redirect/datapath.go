// Package redirect loads and drives ward's eBPF datapath: tc programs on the
// host side of each endpoint's veth that enforce L3/L4 policy and hand
// policy-selected flows to node-local transparent proxies (Envoy's
// listeners, the DNS proxy) with bpf_sk_assign, so the proxy sees the
// original destination as its socket's local address (TPROXY semantics).
//
// The agent's calls, in order:
//
//	d, err := redirect.Load(redirect.Config{PinDir: redirect.DefaultPinDir})
//	undo, err := redirect.InstallProxyRouting(redirect.Routing{})  // once per node; adopts the rules a killed wardd left
//	d.IPCache().Upsert(prefix, identity)         // also filters/dns through the IPCache interface
//	entries, err := policymap.Entries(dir, pol, ports) // per direction
//	  // on an error: d.Lockdown(epID), never skip the endpoint or keep its old entries
//	d.SetPolicy(epID, entries)                   // before enforcing; on an error other than ErrPolicyMapFull
//	  // (which locks down by itself): d.Lockdown(epID)
//	d.AddEndpoint(redirect.Endpoint{ID, IP, IPv6, IfIndex, Identity, EnforceIngress, EnforceEgress})
//	d.AttachDevice(ifindex)                      // each native device (L7 ingress from off the node)
//	d.SetPolicy(redirect.HostEndpointID, entries) // the host firewall (hostfw.go): the host endpoint's policy,
//	d.SetHost(redirect.HostEndpoint{...})        //   its enforcement and audit mode,
//	d.AttachHostFirewall(ifindex)                //   host_in/host_out on each native device
//	redirect.SetHostMode(pinDir, mode)           // `ward bpf host-firewall audit|enforce|config`
//	redirect.DetachPinnedHostFirewall(pinDir)    // `ward bpf host-firewall off` (break glass)
//	d.GC()                                       // every CTGCInterval: frees expired conntrack entries
//	d.ReadEvents(ctx, &stats, fn)                // flow events (drops, new flows' verdicts) until ctx is done; d.EventsLost()
//	d.RemoveEndpoint(epID)
//	d.AddCgroupEndpoint(redirect.CgroupEndpoint{ID, CgroupPath, Identity, EnforceEgress, TCRedirect}) // socket-level mode
//	d.AttachProxyCgroup(envoyCgroup)             // SO_ORIGINAL_DST for socket-level redirects
//	d.Counters(), d.Stats()
//	d.Close()                                    // programs stay attached, maps stay pinned
//	redirect.Cleanup(pinDir)                     // `ward bpf cleanup`
//
// Invariants:
//   - Maps are pinned by name under Config.PinDir and tcx links under
//     PinDir/links; Load reuses both, swapping the new programs into the
//     existing links atomically (BPF_LINK_UPDATE), so restarting wardd
//     neither detaches nor clears anything: no traffic disruption.
//   - A policy rewrite is a swap: each endpoint has two policy generations
//     in the map; SetPolicy fills the idle one, then flips the endpoint's
//     generation bit with one atomic endpoint-entry update, so a packet is
//     decided entirely by the old or entirely by the new policy. The old
//     generation is deleted after a grace period (policyGrace), so the map
//     needs room for up to two generations of an endpoint being rewritten.
//   - Every policy change (SetPolicy, or AddEndpoint changing what is
//     enforced) bumps a node-wide policy revision; a conntrack entry
//     decided under an older revision is decided again, against the new
//     policy, by its flow's next packet in the opening direction: a
//     revoked flow, or a new connection reusing its 5-tuple, is dropped,
//     and a newly added redirect applies to it.
//   - Conntrack entries expire (Cilium's lifetimes: established TCP 6 h,
//     unanswered TCP 60 s, TCP after FIN/RST 10 s, other 60 s); expired
//     entries are ignored by the datapath and removed by GC.
//   - An endpoint whose policy does not fit (per-endpoint budget or map
//     capacity) is put in lockdown (everything to and from it dropped) and
//     the write returns ErrPolicyMapFull; Lockdown does the same on the
//     agent's request. It leaves lockdown when a later SetPolicy succeeds.
//     The datapath never silently allows.
//   - An enforced direction without a matching entry drops (default deny).
//     Port ranges are aligned port blocks in an LPM trie (PortBlocks), so
//     any range is a few entries; ICMP/ICMPv6 is keyed by type.
//   - From and to a pod only IPv4, IPv6 and ARP pass the parser; VLAN-tagged
//     frames (skb->vlan_present or a VLAN ethertype) and other ethertypes
//     are dropped (Cilium's DROP_UNKNOWN_L3). ICMPv6 neighbour discovery
//     (133-137) passes unchecked only with hop limit 255, a link-scope
//     destination and a link-local, unspecified or (from a pod) the pod's
//     own source; every other ICMPv6 type goes through the source check and
//     policy.
//   - tc mode handles IPv4 and IPv6 (Endpoint.IPv6); IPv6 extension headers
//     are not parsed, so such packets (fragments included) are dropped and
//     counted, never passed unchecked. Socket-level mode checks IPv4 and
//     IPv6 sockets (see AddCgroupEndpoint for which cgroups are subject).
//   - Flow events (events.go) cost nothing on established packets: a drop
//     event per dropped packet (rate-limited per key, per CPU) and a verdict
//     event per new conntrack entry and enforced direction; a full ring
//     drops and counts the event, never blocks. An endpoint in audit mode
//     (Endpoint.Audit) passes what its policy would drop and reports it as
//     audited; lockdown and non-policy drops are unaffected.
//   - A redirect that cannot reach its proxy socket drops (ReasonNoProxySocket);
//     it never falls back to delivering the flow around the proxy.
//   - An ingress redirect of a flow that did not come from a local endpoint
//     (another node, the world, the host) is hairpinned: to_pod marks it and
//     redirects it to the ingress of the same veth, where from_pod assigns
//     it to the proxy (README.md, "the hairpin"). AddEndpoint sets the
//     veth's accept_local for it; AttachDevice puts from_netdev on a native
//     device, which assigns such a flow's later packets from off the node
//     before the stack's TCP early demux would drop them.
//
// README.md beside this file lists the maps and what the proxy must do.
package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where wardd pins its maps and links.
const DefaultPinDir = "/sys/fs/bpf/ward"

// DefaultMaxPolicyEntriesPerEndpoint is the per-endpoint policy budget
// (Cilium's default policy map size).
const DefaultMaxPolicyEntriesPerEndpoint = 16384

// Config configures Load. The zero value is usable.
type Config struct {
	// PinDir is the bpffs directory for maps and links (DefaultPinDir when
	// empty). bpffs is mounted there, or on /sys/fs/bpf, when it is not.
	PinDir string
	// PolicyMapSize is the capacity of the policy map shared by all
	// endpoints; 0 keeps the compiled default (131072). It must match an
	// already pinned map.
	PolicyMapSize uint32
	// MaxPolicyEntriesPerEndpoint bounds one endpoint's entries;
	// 0 means DefaultMaxPolicyEntriesPerEndpoint.
	MaxPolicyEntriesPerEndpoint int
	// SockShortcut turns on the sockhash + sk_msg shortcut between a
	// socket-level workload and the proxy: payload moves from one socket
	// straight into its peer's receive queue instead of crossing loopback
	// TCP. Off by default: bytes a peer sends before the other end is in
	// the sockhash (a race at connection setup) take the TCP path and can
	// be read after later shortcut bytes; safe for request/response
	// protocols where the client speaks first after the handshake. Takes
	// effect for sockets established after Load.
	SockShortcut bool
	// NoEvents compiles the flow events out of the tc programs (no drop
	// or verdict events; ReadEvents then waits for nothing). For
	// measuring their cost; wardd keeps them on.
	NoEvents bool
	// EventRingSize is the flow events ring's size in bytes, a power of
	// two and a multiple of the page size; 0 keeps the compiled default
	// (256 KiB, 4096 events).
	EventRingSize uint32
	// Logger receives lifecycle events; nil discards them.
	Logger *slog.Logger
}

// ErrPolicyMapFull reports that an endpoint's policy did not fit; the
// endpoint is locked down.
var ErrPolicyMapFull = errors.New("policy map full")

// Datapath is the loaded programs and maps. Its methods are safe for
// concurrent use.
type Datapath struct {
	cfg    Config
	log    *slog.Logger
	objs   datapathObjects
	sock   sockObjects
	ipc    *IPCache
	mu     sync.Mutex
	eps    map[uint32]Endpoint
	cgeps  map[uint32]cgroupState
	pol    map[uint32]*epPolicy
	locked map[uint32]bool // endpoint id -> locked down for overflow
	links  map[string]link.Link
	host   *HostEndpoint // the host firewall's endpoint (hostfw.go); nil: enforces nothing
}

// Load checks the kernel, mounts bpffs if needed, loads the programs and
// creates or reuses the pinned maps, and re-attaches the programs to every
// link pinned by a previous run.
func Load(cfg Config) (*Datapath, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.MaxPolicyEntriesPerEndpoint == 0 {
		cfg.MaxPolicyEntriesPerEndpoint = DefaultMaxPolicyEntriesPerEndpoint
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := CheckKernel(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w (needs CAP_SYS_RESOURCE on kernels before 5.11)", err)
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	if cfg.PolicyMapSize != 0 {
		spec.Maps[datapathMapWardPolicy].MaxEntries = cfg.PolicyMapSize
	}
	if cfg.EventRingSize != 0 {
		spec.Maps[datapathMapWardEvents].MaxEntries = cfg.EventRingSize
	}
	if cfg.NoEvents {
		if err := spec.Variables[datapathVarEventsEnabled].Set(uint8(0)); err != nil {
			return nil, fmt.Errorf("disable flow events: %w", err)
		}
	}
	d := &Datapath{
		cfg:    cfg,
		log:    log,
		eps:    map[uint32]Endpoint{},
		cgeps:  map[uint32]cgroupState{},
		pol:    map[uint32]*epPolicy{},
		locked: map[uint32]bool{},
		links:  map[string]link.Link{},
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		return nil, loadError(err, cfg.PinDir)
	}
	sspec, err := loadSock()
	if err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("load socket-level spec: %w", err)
	}
	if cfg.PolicyMapSize != 0 {
		sspec.Maps[sockMapWardPolicy].MaxEntries = cfg.PolicyMapSize
	}
	if cfg.SockShortcut {
		if err := sspec.Variables[sockVarShortcutEnabled].Set(uint8(1)); err != nil {
			d.objs.Close()
			return nil, fmt.Errorf("disable sock shortcut: %w", err)
		}
	}
	if cfg.NoEvents {
		if err := sspec.Variables[sockVarEventsEnabled].Set(uint8(0)); err != nil {
			d.objs.Close()
			return nil, fmt.Errorf("disable socket-level flow events: %w", err)
		}
	}
	// The socket hooks report their denials into the tc programs' ring
	// (one reader, ReadEvents) and share their drop-event rate limit.
	sspec.Maps[sockMapWardEvents].MaxEntries = spec.Maps[datapathMapWardEvents].MaxEntries
	sopts := *opts
	sopts.MapReplacements = map[string]*ebpf.Map{
		sockMapWardEvents:     d.objs.WardEvents,
		sockMapWardEventsLost: d.objs.WardEventsLost,
		sockMapWardDropRl:     d.objs.WardDropRl,
	}
	if err := sspec.LoadAndAssign(&d.sock, &sopts); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("socket-level programs: %w", loadError(err, cfg.PinDir))
	}
	// The sk_msg program belongs to the (pinned) sockhash; attaching
	// again after a restart replaces the previous program.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: d.sock.WardSockhash.FD(), Program: d.sock.SockMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		d.objs.Close()
		d.sock.Close()
		return nil, fmt.Errorf("attach sk_msg to the sockhash: %w", err)
	}
	d.ipc = &IPCache{m: d.objs.WardIpcache}
	if err := d.restore(); err != nil {
		d.objs.Close()
		d.sock.Close()
		return nil, err
	}
	return d, nil
}

// loadError names what is missing when loading fails.
func loadError(err error, pinDir string) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		return fmt.Errorf("load datapath: verifier rejected the programs: %-20v", ve)
	case errors.Is(err, ebpf.ErrMapIncompatible):
		return fmt.Errorf("load datapath: pinned map in %s has another layout (run `ward bpf cleanup`): %w", pinDir, err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("load datapath: permission denied: needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (run wardd as root): %w", err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("load datapath: kernel lacks a needed feature (Linux 6.6+ with BPF, LPM tries, bpf_sk_assign, cgroup sock_addr hooks): %w", err)
	}
	return fmt.Errorf("load datapath: %w", err)
}

// restore rebuilds the in-memory mirrors from the pinned maps and swaps the
// new programs into the pinned links.
func (d *Datapath) restore() error {
	gens := map[uint32]uint8{} // endpoint id -> live policy generation
	var (
		ek datapathEndpointKey
		ev datapathEndpointInfo
	)
	it := d.objs.WardEndpoints.Iterate()
	for it.Next(&ek, &ev) {
		ep, ok := d.eps[ev.Id]
		if !ok {
			ep = endpointFromMap(ek, ev)
		}
		if a := wordsAddr(ek.Family, ek.Addr); a.Is4() {
			ep.IP = a
		} else {
			ep.IPv6 = a
		}
		d.eps[ep.ID] = ep
		if ev.Flags&epLockdown != 0 {
			d.locked[ep.ID] = true
		}
		if ev.Flags&epPolicyGen != 0 {
			gens[ep.ID] = 1
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("restore endpoints: %w", err)
	}
	var (
		cgID uint64
		cgv  sockCgroupEp
	)
	cit := d.sock.WardCgroups.Iterate()
	for cit.Next(&cgID, &cgv) {
		d.cgeps[cgv.EndpointId] = cgroupState{
			CgroupEndpoint: CgroupEndpoint{ID: cgv.EndpointId, Identity: cgv.Identity, EnforceEgress: cgv.Flags&epEnforceEgress != 0, TCRedirect: cgv.Flags&cgTCRedirect != 0},
			cgroupID:       cgID,
		}
		if cgv.Flags&epLockdown != 0 {
			d.locked[cgv.EndpointId] = true
		}
		if cgv.Flags&epPolicyGen != 0 {
			gens[cgv.EndpointId] = 1
		}
	}
	if err := cit.Err(); err != nil {
		return fmt.Errorf("restore cgroup endpoints: %w", err)
	}
	if err := d.restoreHost(gens); err != nil {
		return err
	}
	var (
		pk datapathPolicyKey
		pv datapathPolicyValue
	)
	pit := d.objs.WardPolicy.Iterate()
	for pit.Next(&pk, &pv) {
		p := d.pol[pk.EndpointId]
		if p == nil {
			p = &epPolicy{gen: gens[pk.EndpointId], live: map[PolicyKey]policyVal{}, stale: map[PolicyKey]policyVal{}}
			d.pol[pk.EndpointId] = p
		}
		k, gen := policyKeyFromMap(pk)
		v := policyVal{Verdict: Verdict(pv.Verdict), ProxyPort: pv.ProxyPort}
		if gen == p.gen {
			p.live[k] = v
		} else {
			p.stale[k] = v
		}
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("restore policy: %w", err)
	}
	dir := filepath.Join(d.cfg.PinDir, "links")
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("restore links: %w", err)
	}
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		prog := d.progForLink(e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err == nil && prog == nil {
			l.Close()
			err = errors.New("unknown link name")
		}
		if err == nil {
			err = l.Update(prog)
			if err != nil {
				l.Close()
			}
		}
		if err != nil {
			// The interface is gone (defunct link) or the pin is stale.
			d.log.Warn("dropping stale pinned link", "path", path, "error", err)
			if rerr := os.Remove(path); rerr != nil {
				d.log.Warn("remove stale link pin", "path", path, "error", rerr)
			}
			continue
		}
		d.links[e.Name()] = l
		d.log.Info("re-attached pinned link", "link", e.Name())
	}
	return nil
}

// IPCache returns the ipcache writer.
func (d *Datapath) IPCache() *IPCache { return d.ipc }

// PinDir returns the bpffs directory in use.
func (d *Datapath) PinDir() string { return d.cfg.PinDir }

// Close releases this process's handles. Pinned maps and links (and so
// enforcement) stay in place; use RemoveEndpoint or Cleanup to undo them.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for name, l := range d.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link %s: %w", name, err))
		}
	}
	d.links = map[string]link.Link{}
	errs = append(errs, d.objs.Close(), d.sock.Close())
	return errors.Join(errs...)
}

// ensureBPFFS makes dir a directory on a bpf filesystem, mounting one
// when needed.
func ensureBPFFS(dir string) error {
	if isBPFFS(dir) {
		return nil
	}
	parent := filepath.Dir(dir)
	if !isBPFFS(parent) {
		target := dir
		if parent == "/sys/fs/bpf" {
			target = parent
		}
		if err := os.MkdirAll(target, 0o700); err != nil {
			return fmt.Errorf("bpffs: mkdir %s: %w", target, err)
		}
		if err := unix.Mount("bpf", target, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("bpffs: mount on %s: %w (needs CAP_SYS_ADMIN, or mount bpffs yourself)", target, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bpffs: mkdir %s: %w", dir, err)
	}
	if !isBPFFS(dir) {
		return fmt.Errorf("bpffs: %s is not on a bpf filesystem", dir)
	}
	return nil
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == unix.BPF_FS_MAGIC
}

// Cleanup removes everything ward pinned under pinDir: it detaches the
// programs (unpinning the last reference of each tcx link) and unpins the
// maps. Missing pins are not an error.
func Cleanup(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Stat(pinDir); os.IsNotExist(err) {
		return nil
	}
	var errs []error
	linkDir := filepath.Join(pinDir, "links")
	ents, _ := os.ReadDir(linkDir)
	for _, e := range ents {
		path := filepath.Join(linkDir, e.Name())
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			if err := l.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin link %s: %w", path, err))
			}
			l.Close()
			continue
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove link pin %s: %w", path, err))
		}
	}
	if err := os.Remove(linkDir); err != nil && !os.IsNotExist(err) {
		errs = append(errs, fmt.Errorf("remove %s: %w", linkDir, err))
	}
	for _, name := range []string{
		datapathMapWardCt, datapathMapWardEndpoints, datapathMapWardFrag, datapathMapWardHost,
		datapathMapWardIpcache, datapathMapWardMetrics, datapathMapWardPolicy, datapathMapWardPolicyRev,
		sockMapWardCgroups, sockMapWardSockOrig, sockMapWardOrigdst, sockMapWardSockhash,
	} {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", name, err))
		}
	}
	if err := os.Remove(pinDir); err != nil && !os.IsNotExist(err) && !errors.Is(err, unix.EBUSY) {
		errs = append(errs, fmt.Errorf("remove %s: %w", pinDir, err))
	}
	return errors.Join(errs...)
}

func linkName(ifindex int, ingress bool) string {
	if ingress {
		return "tcx-" + strconv.Itoa(ifindex) + "-ingress"
	}
	return "tcx-" + strconv.Itoa(ifindex) + "-egress"
}

// ProgramStats is a program's cumulative run time and run count, counted
// while BPF statistics are enabled (ebpf.EnableStats or the
// kernel.bpf_stats_enabled sysctl).
type ProgramStats struct {
	RunTimeNS uint64
	RunCount  uint64
}

// Stats returns the statistics of the from_pod and to_pod programs.
func (d *Datapath) Stats() (fromPod, toPod ProgramStats, err error) {
	for _, x := range []struct {
		p   *ebpf.Program
		out *ProgramStats
	}{{d.objs.FromPod, &fromPod}, {d.objs.ToPod, &toPod}} {
		st, serr := x.p.Stats()
		if serr != nil {
			return fromPod, toPod, fmt.Errorf("program stats: %w", serr)
		}
		*x.out = ProgramStats{RunTimeNS: uint64(st.Runtime.Nanoseconds()), RunCount: st.RunCount}
	}
	return fromPod, toPod, nil
}
