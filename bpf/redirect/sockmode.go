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
	"golang.org/x/sys/unix"
)

// Socket-level mode: for workloads in a cgroup whose packets never cross
// a veth the node controls (host-network processes), the egress policy is
// applied when a socket connects or sends (cgroup connect4/6, sendmsg4/6),
// denied connects fail with EPERM, and redirected sockets are pointed at
// the proxy on 127.0.0.1:<proxy port>. The proxy reads the original
// destination with getsockopt(SOL_IP, SO_ORIGINAL_DST) on the accepted
// socket, answered by a getsockopt hook on the proxy's cgroup (see
// AttachProxyCgroup) from a record the sock_ops program made at connect.
// UDP replies from the proxy appear to come from the original destination
// (recvmsg4/6, getpeername4/6). Ingress policy is not enforced in this mode.
//
// A workload whose packets do cross a veth with the tc programs (a pod in
// its own network namespace, wardd's datapath.mode socket) is registered
// with CgroupEndpoint.TCRedirect under its tc endpoint's ID: the hooks then
// take only the verdicts (EPERM at connect/sendmsg for a denied
// destination) and leave redirects to tc, whose bpf_sk_assign keeps the
// original destination (IPv6 included) and reaches the host's proxies,
// which a rewrite to the pod's own loopback would not.

// CgroupEndpoint is a workload identified by its cgroup (v2).
type CgroupEndpoint struct {
	// ID is the endpoint id its policy is written under (SetPolicy);
	// distinct from the veth endpoints' ids.
	ID uint32
	// CgroupPath is the workload's cgroup directory.
	CgroupPath string
	// Identity is the workload's security identity.
	Identity uint32
	// EnforceEgress turns default-deny on for the workload's egress.
	EnforceEgress bool
	// TCRedirect is for a workload whose packets also cross a veth with
	// the tc programs (AddEndpoint under the same ID): the hooks only
	// allow or deny (EPERM at connect, sendmsg), and a connection the
	// policy redirects is let through unchanged for tc to assign to the
	// proxy, keeping its original destination (IPv6 included) and
	// reaching the host's proxies from the workload's own namespace. The
	// policy (SetPolicy) and the lockdown and generation flags are the
	// endpoint's, shared by both entries.
	TCRedirect bool
}

// cgTCRedirect is sock.c's CG_TC_REDIRECT.
const cgTCRedirect = 0x100

type cgroupHook struct {
	name string
	at   ebpf.AttachType
	prog func(*sockPrograms) *ebpf.Program
}

var workloadHooks = []cgroupHook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *sockPrograms) *ebpf.Program { return p.SockConnect4 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *sockPrograms) *ebpf.Program { return p.SockSendmsg4 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *sockPrograms) *ebpf.Program { return p.SockRecvmsg4 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *sockPrograms) *ebpf.Program { return p.SockGetpeername4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *sockPrograms) *ebpf.Program { return p.SockConnect6 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *sockPrograms) *ebpf.Program { return p.SockSendmsg6 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *sockPrograms) *ebpf.Program { return p.SockRecvmsg6 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *sockPrograms) *ebpf.Program { return p.SockGetpeername6 }},
	// sockops stays last (proxyHooks).
	{"sockops", ebpf.AttachCGroupSockOps, func(p *sockPrograms) *ebpf.Program { return p.SockOps }},
}

var proxyHook = cgroupHook{"getsockopt", ebpf.AttachCGroupGetsockopt, func(p *sockPrograms) *ebpf.Program { return p.SockGetsockopt }}

// progForLink returns the program a pinned link of that name runs.
func (d *Datapath) progForLink(name string) *ebpf.Program {
	hook := name[strings.LastIndexByte(name, '-')+1:]
	switch hook {
	case "ingress":
		return d.objs.FromPod
	case "egress":
		return d.objs.ToPod
	case netdevHook:
		return d.objs.FromNetdev
	case hostInHook:
		return d.objs.HostIn
	case hostOutHook:
		return d.objs.HostOut
	case proxyHook.name:
		return proxyHook.prog(&d.sock.sockPrograms)
	}
	for _, h := range workloadHooks {
		if h.name == hook {
			return h.prog(&d.sock.sockPrograms)
		}
	}
	return nil
}

func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not on a cgroup v2 filesystem", path)
	}
	return st.Ino, nil
}

// AddCgroupEndpoint registers a socket-level workload and attaches the
// workload hooks to its cgroup (links pinned, re-attached on restart).
// Write its policy with SetPolicy(ep.ID, …) first.
// Which sockets are subject: every task in a registered cgroup
// (AddCgroupEndpoint) or in any cgroup below it (the hooks are attached to
// the registered cgroup and run for its whole subtree). Such a task is
// governed by its own cgroup's entry, else by the nearest registered
// ancestor at cgroup level 16 or above (the root is level 0). A task in
// the subtree for which neither is found (its registered ancestor is
// deeper than level 16) is denied: EPERM, counted ReasonNoCgroupEndpoint. IPv6 sockets are checked like IPv4 ones; a
// destination ::ffff:a.b.c.d (IPv4-mapped) is decided, and redirected,
// as the IPv4 address a.b.c.d; a redirect of a native IPv6 destination is
// denied (ReasonRedirectUnsupported: the proxy's original-destination
// plumbing is IPv4 only).
func (d *Datapath) AddCgroupEndpoint(ep CgroupEndpoint) error {
	if ep.ID == 0 || ep.Identity == 0 {
		return errors.New("add cgroup endpoint: id and identity must be non-zero")
	}
	cg, err := cgroupID(ep.CgroupPath)
	if err != nil {
		return fmt.Errorf("add cgroup endpoint %d: %w", ep.ID, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := cgroupState{CgroupEndpoint: ep, cgroupID: cg}
	if err := d.writeCgroupEndpoint(st); err != nil {
		return err
	}
	d.cgeps[ep.ID] = st
	for _, h := range workloadHooks {
		name := fmt.Sprintf("cg-%d-%s", ep.ID, h.name)
		if err := d.attachCgroup(name, ep.CgroupPath, h); err != nil {
			return fmt.Errorf("add cgroup endpoint %d: %w", ep.ID, err)
		}
	}
	return nil
}

type cgroupState struct {
	CgroupEndpoint
	cgroupID uint64
}

func (d *Datapath) writeCgroupEndpoint(st cgroupState) error {
	ep, cg := st.CgroupEndpoint, st.cgroupID
	var flags uint32
	if ep.EnforceEgress {
		flags |= epEnforceEgress
	}
	if ep.TCRedirect {
		flags |= cgTCRedirect
	}
	if d.locked[ep.ID] {
		flags |= epLockdown
	}
	flags |= d.genFlag(ep.ID)
	v := sockCgroupEp{EndpointId: ep.ID, Identity: ep.Identity, Flags: flags}
	if err := d.sock.WardCgroups.Update(&cg, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("cgroup map update %d: %w", ep.ID, err)
	}
	return nil
}

func (d *Datapath) attachCgroup(name, path string, h cgroupHook) error {
	prog := h.prog(&d.sock.sockPrograms)
	if l, ok := d.links[name]; ok {
		if err := l.Update(prog); err != nil {
			return fmt.Errorf("update link %s: %w", name, err)
		}
		return nil
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: h.at, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to cgroup %s: %w", h.name, path, err)
	}
	dir := filepath.Join(d.cfg.PinDir, "links")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		l.Close()
		return fmt.Errorf("pin dir: %w", err)
	}
	if err := l.Pin(filepath.Join(dir, name)); err != nil {
		l.Close()
		return fmt.Errorf("pin link %s: %w", name, err)
	}
	d.links[name] = l
	return nil
}

// RemoveCgroupEndpoint detaches the workload hooks and deletes the
// workload's map and policy entries. Unknown ids are not an error.
func (d *Datapath) RemoveCgroupEndpoint(id uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.cgeps[id]
	if !ok {
		return nil
	}
	var errs []error
	for _, h := range workloadHooks {
		errs = append(errs, d.detach(fmt.Sprintf("cg-%d-%s", id, h.name)))
	}
	if err := d.sock.WardCgroups.Delete(&st.cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("cgroup map delete: %w", err))
	}
	errs = append(errs, d.deletePolicy(id))
	delete(d.cgeps, id)
	delete(d.locked, id)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove cgroup endpoint %d: %w", id, err)
	}
	return nil
}

// AttachProxyCgroup attaches the SO_ORIGINAL_DST getsockopt hook and the
// sock_ops program (which puts the proxy's ends of redirected connections
// into the sk_msg shortcut) to the cgroup the proxy (Envoy) runs in. Other
// getsockopt calls and other sockets are left alone.
func (d *Datapath) AttachProxyCgroup(path string) error {
	cg, err := cgroupID(path)
	if err != nil {
		return fmt.Errorf("attach proxy cgroup: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range proxyHooks() {
		if err := d.attachCgroup("proxy-"+strconv.FormatUint(cg, 10)+"-"+h.name, path, h); err != nil {
			return fmt.Errorf("attach proxy cgroup: %w", err)
		}
	}
	return nil
}

func proxyHooks() []cgroupHook {
	return []cgroupHook{proxyHook, workloadHooks[len(workloadHooks)-1]} // getsockopt, sockops
}

// DetachProxyCgroup removes the hook AttachProxyCgroup attached.
func (d *Datapath) DetachProxyCgroup(path string) error {
	cg, err := cgroupID(path)
	if err != nil {
		return fmt.Errorf("detach proxy cgroup: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, h := range proxyHooks() {
		errs = append(errs, d.detach("proxy-"+strconv.FormatUint(cg, 10)+"-"+h.name))
	}
	return errors.Join(errs...)
}

// detach unpins and closes a link. Called with d.mu.
func (d *Datapath) detach(name string) error {
	l, ok := d.links[name]
	if !ok {
		return nil
	}
	delete(d.links, name)
	return errors.Join(l.Unpin(), l.Close())
}

// deletePolicy removes every policy entry of an endpoint. Called with d.mu.
func (d *Datapath) deletePolicy(id uint32) error {
	var errs []error
	p := d.pol[id]
	if p == nil {
		return nil
	}
	for gen, set := range map[uint8]map[PolicyKey]policyVal{p.gen: p.live, 1 - p.gen: p.stale} {
		for pk := range set {
			mk := pk.mapKey(id, gen)
			if err := d.objs.WardPolicy.Delete(&mk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("policy delete: %w", err))
			}
		}
	}
	delete(d.pol, id)
	return errors.Join(errs...)
}
