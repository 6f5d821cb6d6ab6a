package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// The host firewall (hostfw.h): host policies enforced for the node itself
// on its native devices. host_in (tc ingress, first in the chain) decides
// packets addressed to the node's addresses (ipcache identity host),
// host_out (tc egress) packets the node sends from them, both by the host
// endpoint's policy (HostEndpointID in the policy map, written with
// SetPolicy like any endpoint's). Traffic of pods and forwarded traffic is
// left to the other programs.

// HostEndpointID is the host endpoint's id in the policy map. Endpoint ids
// of workloads must differ from it.
const HostEndpointID uint32 = 0xFFFF_FFFF

// Link hook names of the host firewall's programs
// ("tcx-<ifindex>-hostin", "tcx-<ifindex>-hostout").
const (
	hostInHook  = "hostin"
	hostOutHook = "hostout"
)

// hostAuditFlag is EP_AUDIT (hostfw.h, datapath.h).
const hostAuditFlag = 16

// ReasonHostAudit counts packets the host firewall would have dropped and
// let pass because the host endpoint is in audit mode (R_HOST_AUDIT).
const ReasonHostAudit Reason = 30

// HostEndpoint is the host endpoint's enforcement: which directions some
// host policy selects (default deny there; a direction no host policy
// selects allows everything, as Cilium's host endpoint without policy)
// and audit mode (would-be drops pass and are counted as ReasonHostAudit).
type HostEndpoint struct {
	EnforceIngress, EnforceEgress bool
	Audit                         bool
}

func (h HostEndpoint) flags(locked bool) uint32 {
	f := Endpoint{EnforceIngress: h.EnforceIngress, EnforceEgress: h.EnforceEgress}.flags(locked)
	if h.Audit {
		f |= hostAuditFlag
	}
	return f
}

// HostMode is the operator's runtime override of the host endpoint's
// audit mode (`ward bpf host-firewall audit|enforce`). The agent resets it
// to HostModeConfig when it starts: as in Cilium, audit mode set at
// runtime does not survive an agent restart.
type HostMode uint32

// Host modes (ward_host[1] in hostfw.h).
const (
	HostModeConfig  HostMode = 0 // the agent's setting (hostFirewall.audit)
	HostModeAudit   HostMode = 1 // audit whatever the agent says
	HostModeEnforce HostMode = 2 // enforce whatever the agent says
)

func (m HostMode) String() string {
	switch m {
	case HostModeConfig:
		return "config"
	case HostModeAudit:
		return "audit"
	case HostModeEnforce:
		return "enforce"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// SetHost writes the host endpoint's enforcement. Write its policy with
// SetPolicy(HostEndpointID, ...) first, as for any endpoint. A change of
// what is enforced re-decides every tracked flow.
func (d *Datapath) SetHost(h HostEndpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.host
	d.host = &h
	if err := d.writeHost(); err != nil {
		return fmt.Errorf("set host endpoint: %w", err)
	}
	if old == nil || *old != h {
		if err := d.bumpPolicyRev(); err != nil {
			return fmt.Errorf("set host endpoint: %w", err)
		}
	}
	return nil
}

// writeHost writes ward_host[0] from d.host, the lockdown and the policy
// generation. Called with d.mu.
func (d *Datapath) writeHost() error {
	var h HostEndpoint
	if d.host != nil {
		h = *d.host
	}
	k := uint32(0)
	v := datapathHostState{Id: HostEndpointID, Flags: h.flags(d.locked[HostEndpointID]) | d.genFlag(HostEndpointID)}
	if err := d.objs.WardHost.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("host map update: %w", err)
	}
	return nil
}

// restoreHost reads the host endpoint's live policy generation from the
// pinned host map (restore). Called with d.mu or before d is shared.
func (d *Datapath) restoreHost(gens map[uint32]uint8) error {
	var (
		k uint32
		v datapathHostState
	)
	if err := d.objs.WardHost.Lookup(&k, &v); err != nil {
		return fmt.Errorf("restore host endpoint: %w", err)
	}
	if v.Flags&epPolicyGen != 0 {
		gens[HostEndpointID] = 1
	}
	if v.Flags&epLockdown != 0 {
		d.locked[HostEndpointID] = true
	}
	if v.Flags&(epEnforceIngress|epEnforceEgress) != 0 {
		d.host = &HostEndpoint{EnforceIngress: v.Flags&epEnforceIngress != 0, EnforceEgress: v.Flags&epEnforceEgress != 0, Audit: v.Flags&hostAuditFlag != 0}
	}
	return nil
}

// SetHostMode sets the operator's audit override in the datapath pinned
// under pinDir without loading anything (`ward bpf host-firewall`), and
// bumps the policy revision so that tracked flows are decided again under
// the new mode; the agent calls it with HostModeConfig when it starts.
func SetHostMode(pinDir string, m HostMode) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	mp, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, datapathMapWardHost), nil)
	if err != nil {
		return fmt.Errorf("open pinned host map: %w", err)
	}
	defer mp.Close()
	k := uint32(1)
	v := datapathHostState{Flags: uint32(m)}
	if err := mp.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set host mode %v: %w", m, err)
	}
	// Flows audit mode let through are decided again by their next packet
	// (leaving audit mode drops the ones the policy denies).
	rev, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, datapathMapWardPolicyRev), nil)
	if err != nil {
		return fmt.Errorf("set host mode %v: open pinned policy revision: %w", m, err)
	}
	defer rev.Close()
	var zero, r uint32
	if err := rev.Lookup(&zero, &r); err != nil {
		return fmt.Errorf("set host mode %v: read policy revision: %w", m, err)
	}
	r++
	if err := rev.Update(&zero, &r, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set host mode %v: bump policy revision: %w", m, err)
	}
	return nil
}

// HostState is the host endpoint as the pinned datapath holds it.
type HostState struct {
	HostEndpoint
	Locked bool
	// Mode is the operator's override; Audit above is the agent's.
	Mode HostMode
	// Devices are the ifindexes whose host firewall links are pinned.
	Devices []int
}

// PinnedHostState reads the host endpoint of the datapath pinned under
// pinDir without loading anything.
func PinnedHostState(pinDir string) (HostState, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	var st HostState
	mp, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, datapathMapWardHost), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return st, fmt.Errorf("open pinned host map: %w", err)
	}
	defer mp.Close()
	var v, o datapathHostState
	k0, k1 := uint32(0), uint32(1)
	if err := mp.Lookup(&k0, &v); err != nil {
		return st, fmt.Errorf("read host map: %w", err)
	}
	if err := mp.Lookup(&k1, &o); err != nil {
		return st, fmt.Errorf("read host map: %w", err)
	}
	st.EnforceIngress = v.Flags&epEnforceIngress != 0
	st.EnforceEgress = v.Flags&epEnforceEgress != 0
	st.Audit = v.Flags&hostAuditFlag != 0
	st.Locked = v.Flags&epLockdown != 0
	st.Mode = HostMode(o.Flags)
	st.Devices = pinnedHostDevices(pinDir)
	return st, nil
}

func pinnedHostDevices(pinDir string) []int {
	ents, _ := os.ReadDir(filepath.Join(pinDir, "links"))
	var out []int
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), "-"+hostInHook) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(e.Name(), "tcx-"), "-"+hostInHook))
		if err == nil {
			out = append(out, n)
		}
	}
	return out
}

func hostLinkName(ifindex int, hook string) string {
	return "tcx-" + strconv.Itoa(ifindex) + "-" + hook
}

// AttachHostFirewall attaches host_in to tc ingress of a native device
// (first in its tcx chain, so it sees the packets before from_netdev) and
// host_out to its tc egress, and sets the device's accept_local (the
// host's DNS queries that a host policy's DNS rules send to the DNS proxy
// are hairpinned through the device's ingress). The links are pinned like the endpoints';
// a restart swaps the programs in.
func (d *Datapath) AttachHostFirewall(ifindex int) error {
	if ifindex <= 0 {
		return fmt.Errorf("attach host firewall: invalid ifindex %d", ifindex)
	}
	// The host's DNS queries hairpinned to the DNS proxy come back in with
	// one of the host's own addresses as their source (martian otherwise).
	if err := acceptLocal(ifindex); err != nil {
		return fmt.Errorf("attach host firewall: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, x := range []struct {
		hook   string
		prog   *ebpf.Program
		at     ebpf.AttachType
		anchor link.Anchor
	}{
		{hostInHook, d.objs.HostIn, ebpf.AttachTCXIngress, link.Head()},
		{hostOutHook, d.objs.HostOut, ebpf.AttachTCXEgress, nil},
	} {
		name := hostLinkName(ifindex, x.hook)
		if l, ok := d.links[name]; ok {
			if err := l.Update(x.prog); err != nil {
				return fmt.Errorf("attach host firewall: update tcx link %s: %w", name, err)
			}
			continue
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: x.prog, Attach: x.at, Anchor: x.anchor})
		if err != nil {
			return fmt.Errorf("attach host firewall ifindex %d: %w", ifindex, err)
		}
		dir := filepath.Join(d.cfg.PinDir, "links")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			l.Close()
			return fmt.Errorf("attach host firewall: pin dir: %w", err)
		}
		if err := l.Pin(filepath.Join(dir, name)); err != nil {
			l.Close()
			return fmt.Errorf("attach host firewall: pin tcx link %s: %w", name, err)
		}
		d.links[name] = l
	}
	return nil
}

// DetachHostFirewall detaches the host firewall from a device; a device
// without it is not an error.
func (d *Datapath) DetachHostFirewall(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, hook := range []string{hostInHook, hostOutHook} {
		if err := d.detach(hostLinkName(ifindex, hook)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("detach host firewall %d: %w", ifindex, err))
		}
	}
	return errors.Join(errs...)
}

// DetachHostFirewalls detaches the host firewall from every device it is
// attached to (wardd with the host firewall disabled, after a run that had
// it).
func (d *Datapath) DetachHostFirewalls() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for name := range d.links {
		hook := name[strings.LastIndexByte(name, '-')+1:]
		if hook != hostInHook && hook != hostOutHook {
			continue
		}
		if err := d.detach(name); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("detach host firewall: %w", err))
		}
	}
	return errors.Join(errs...)
}

// DetachPinnedHostFirewall is the break-glass path (`ward bpf host-firewall
// off`): it detaches the host firewall's links pinned under pinDir from
// their devices (BPF_LINK_DETACH, effective even while a running agent
// holds the links) and unpins them, without loading anything. Host
// traffic is then allowed until the agent is restarted. It returns the
// ifindexes it detached.
func DetachPinnedHostFirewall(pinDir string) ([]int, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	dir := filepath.Join(pinDir, "links")
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("host firewall off: %w", err)
	}
	var (
		out  []int
		errs []error
	)
	for _, e := range ents {
		name := e.Name()
		hook := name[strings.LastIndexByte(name, '-')+1:]
		if hook != hostInHook && hook != hostOutHook {
			continue
		}
		path := filepath.Join(dir, name)
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("host firewall off: open %s: %w", path, err))
			continue
		}
		if err := l.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("host firewall off: detach %s: %w", name, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("host firewall off: unpin %s: %w", name, err))
		}
		l.Close()
		if hook == hostInHook {
			if n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, "tcx-"), "-"+hostInHook)); err == nil {
				out = append(out, n)
			}
		}
	}
	return out, errors.Join(errs...)
}

// HostStats returns the statistics of the host firewall's programs
// (counted while BPF statistics are enabled, as Stats).
func (d *Datapath) HostStats() (in, out ProgramStats, err error) {
	for _, x := range []struct {
		p   *ebpf.Program
		out *ProgramStats
	}{{d.objs.HostIn, &in}, {d.objs.HostOut, &out}} {
		st, serr := x.p.Stats()
		if serr != nil {
			return in, out, fmt.Errorf("host firewall program stats: %w", serr)
		}
		*x.out = ProgramStats{RunTimeNS: uint64(st.Runtime.Nanoseconds()), RunCount: st.RunCount}
	}
	return in, out, nil
}

// HostMode returns the operator's override (ward_host[1]) of the loaded
// datapath: what `ward bpf host-firewall audit|enforce|config` set last.
func (d *Datapath) HostMode() (HostMode, error) {
	k := uint32(1)
	var v datapathHostState
	if err := d.objs.WardHost.Lookup(&k, &v); err != nil {
		return HostModeConfig, fmt.Errorf("read host mode: %w", err)
	}
	return HostMode(v.Flags), nil
}
