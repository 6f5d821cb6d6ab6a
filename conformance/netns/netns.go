// Package netns builds the node topology ward's end-to-end tests run in: N
// "pods", each a network namespace joined to the host (root) namespace by a
// veth pair, laid out the way a routed veth CNI (Calico, Cilium's native
// routing) does it:
//
//	pod netns "ward-<S>-<name>"          root netns
//	  eth0 10.200.S.N/32   <== veth ==>   wdS-N   (10.200.S.254/32, forwarding=1)
//	  10.200.0.0/16 via 169.254.1.1        10.200.S.N/32 dev wdS-N src 10.200.S.254
//
// Every packet between two pods, and between a pod and the host, crosses the
// host side of the pod's veth, which is where bpf/redirect attaches its tc
// programs: ingress of the host-side veth is traffic leaving the pod,
// egress of it is traffic entering the pod.
//
// Usage:
//
//	topo := netns.New(t)                       // root; skips (fails under CI) otherwise
//	ds := topo.AddPod(t, netns.PodConfig{Name: "deathstar", Labels: map[string]string{"org": "empire"}})
//	tf := topo.AddPod(t, netns.PodConfig{Name: "tiefighter"})
//	ln, _ := ds.Listen("tcp", ":80")            // socket lives in the pod's netns
//	go http.Serve(ln, handler)
//	out, err := tf.Run(ctx, "curl", "-s", "http://"+ds.IP.String()+"/")
//
// Invariants:
//   - Each Topology claims a unique /24 (10.200.S.0/24) with an flock under
//     /run/ward-netns, so topologies of tests running in parallel, in any
//     process, never share addresses, namespaces or interface names.
//   - Only the topology's own namespaces, veths (whose host sides carry the
//     per-device sysctls the layout needs: IPv4 forwarding, and IPv6
//     force_forwarding, Linux 6.17+, for pods with PodConfig.IPv6) and the
//     host routes on them are created in the root namespace; global sysctls, the host's interfaces and
//     its routing rules are never touched. Pods route only 10.200.0.0/16 (and
//     the extra prefixes a PodConfig names) to the host, so nothing leaks to
//     the host's uplink by default.
//   - NewNode makes the host side a namespace of its own (a node of a
//     multi-node cluster); Connect gives it a native device to an underlay.
//   - Teardown (t.Cleanup, also on failure) deletes the veths and namespaces
//     and releases the /24.
//
// Every pod also gets its own cgroup (cgroup v2, Pod.Cgroup), and
// Pod.Command starts its process in it (clone3 CLONE_INTO_CGROUP), so
// cgroup-attached BPF (ward's socket-level mode) sees the pod's processes.
// Topology.AddCgroup makes further cgroups for host-namespace workloads
// (a host-network "pod", the proxy).
//
// Sockets created by Pod.Listen, Pod.ListenPacket and Pod.Dial belong to the
// pod's namespace for their whole life, whichever goroutine uses them. Real
// client binaries (curl, dig, kcat, grpcurl) run through Pod.Command, which is
// `ip netns exec`.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/internal/testenv"
)

// GatewayIP is the link-local next hop every pod routes through; the host
// side of the veth answers for it through a static neighbour entry.
var GatewayIP = netip.MustParseAddr("169.254.1.1")

// PodCIDR is the range pods route to the host; PodCIDR6 its IPv6
// counterpart, GatewayIPv6 the host's link-local next hop.
var (
	PodCIDR     = netip.MustParsePrefix("10.200.0.0/16")
	PodCIDR6    = netip.MustParsePrefix("fd00:200::/32")
	GatewayIPv6 = netip.MustParseAddr("fe80::1")
)

func ip6(s, n int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0x00, 0x02, 0x00, 0, byte(s), 14: byte(n >> 8), 15: byte(n)})
}

const lockDir = "/run/ward-netns"

// Topology is one node: the root namespace plus its pods.
type Topology struct {
	// Subnet is the /24 this topology's pods are numbered from.
	Subnet netip.Prefix
	// HostIP is the host's address on every pod veth (10.200.S.254); pods
	// reach the host namespace there, and host-originated traffic to pods
	// uses it as its source.
	HostIP netip.Addr
	// HostIPv6 is the same for IPv6 (fd00:200:S::fe).
	HostIPv6 netip.Addr

	index    int        // S
	host     *Namespace // the node's host namespace (NewNode); nil: the root namespace
	lock     *os.File
	mu       sync.Mutex
	pods     []*Pod
	cgroups  []*Cgroup
	nextHost int
}

// Cgroup is a cgroup v2 directory the topology created.
type Cgroup struct {
	// Path is the cgroup's directory; ID its cgroup id (the directory's
	// inode number, what bpf_get_current_cgroup_id returns).
	Path string
	ID   uint64

	dir *os.File // held open for CLONE_INTO_CGROUP
}

// Command returns a command that runs in the cgroup, in the caller's
// network namespace.
func (cg *Cgroup) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if err := cg.apply(cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// apply makes cmd start inside the cgroup; the directory fd is closed
// when the process has started (or failed to).
func (cg *Cgroup) apply(cmd *exec.Cmd) error {
	if cg.dir == nil {
		return fmt.Errorf("cgroup %s removed", cg.Path)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(cg.dir.Fd())
	return nil
}

// CgroupRoot returns the cgroup v2 mount point ("" when there is none).
func CgroupRoot() string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	return ""
}

// AddCgroup creates a cgroup for a host-namespace workload; it is removed
// with the topology (after its processes have exited).
func (topo *Topology) AddCgroup(name string) (*Cgroup, error) {
	cg, err := topo.newCgroup("x-" + name)
	if err != nil {
		return nil, err
	}
	topo.mu.Lock()
	topo.cgroups = append(topo.cgroups, cg)
	topo.mu.Unlock()
	return cg, nil
}

func (topo *Topology) newCgroup(name string) (*Cgroup, error) {
	root := CgroupRoot()
	if root == "" {
		return nil, errors.New("no cgroup v2 hierarchy mounted")
	}
	path := filepath.Join(root, fmt.Sprintf("ward-%d-%s", topo.index, name))
	if err := os.Mkdir(path, 0o755); err != nil && !os.IsExist(err) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	dir, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return &Cgroup{Path: path, ID: st.Ino, dir: dir}, nil
}

// remove deletes the cgroup directory, killing what still runs in it.
func (cg *Cgroup) remove() error {
	if cg == nil {
		return nil
	}
	if cg.dir != nil {
		cg.dir.Close()
		cg.dir = nil
	}
	if _, err := os.Stat(cg.Path); os.IsNotExist(err) {
		return nil
	}
	_ = os.WriteFile(filepath.Join(cg.Path, "cgroup.kill"), []byte("1"), 0o644)
	var err error
	for range 50 {
		if err = os.Remove(cg.Path); err == nil || os.IsNotExist(err) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", cg.Path, err)
}

// PodConfig describes one pod.
type PodConfig struct {
	// Name is the pod's name, unique in the topology ([a-z0-9-], used in the
	// namespace name).
	Name string
	// Labels are the pod's labels (metadata for the policy engine).
	Labels map[string]string
	// IP is the pod's address; zero picks the next free 10.200.S.N.
	IP netip.Addr
	// Routes are extra prefixes the pod routes to the host besides PodCIDR
	// (for instance a TEST-NET range standing in for the internet); IPv6
	// ones only when the pod has IPv6.
	Routes []netip.Prefix
	// IPv6 also gives the pod fd00:200:S::N/128, routed like the IPv4
	// address (fd00:200::/32 via the host's fe80::1).
	IPv6 bool
}

// Pod is one network namespace with its veth.
type Pod struct {
	Name   string
	Labels map[string]string
	IP     netip.Addr
	// IPv6 is the pod's IPv6 address when PodConfig.IPv6 asked for one.
	IPv6 netip.Addr
	// NetNS is the namespace name (for `ip netns exec`); NetNSPath its
	// bind-mount path.
	NetNS     string
	NetNSPath string
	// HostIf is the host-side veth name and HostIfIndex its ifindex in the
	// root namespace: where tc programs attach.
	HostIf      string
	HostIfIndex int
	// HostMAC and PodMAC are the veth ends' addresses.
	HostMAC, PodMAC net.HardwareAddr
	// Cgroup is the pod's cgroup; Command runs processes in it. Nil when
	// the machine has no cgroup v2 hierarchy.
	Cgroup *Cgroup

	topo *Topology
}

// New creates an empty topology, claiming a free /24. It needs root and the
// ip command; it registers its teardown with t.Cleanup.
func New(t testing.TB) *Topology {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	topo, err := newTopology()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("netns teardown: %v", err)
		}
	})
	return topo
}

// Create is New for programs that are not tests (benchmarks, demos): the
// caller must Close the topology. It needs root and the ip command.
func Create() (*Topology, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("netns: needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netns: %w (install iproute2)", err)
	}
	return newTopology()
}

func newTopology() (*Topology, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("lock dir: %w", err)
	}
	for s := 1; s < 250; s++ {
		f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("subnet-%d.lock", s)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock subnet %d: %w", s, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		topo := &Topology{
			Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(s), 0}), 24),
			HostIP:   netip.AddrFrom4([4]byte{10, 200, byte(s), 254}),
			HostIPv6: ip6(s, 0xfe),
			index:    s,
			lock:     f,
			nextHost: 1,
		}
		// A previous process holding this /24 may have died without
		// cleaning up: remove its leftovers.
		topo.sweep()
		return topo, nil
	}
	return nil, errors.New("no free 10.200.S.0/24 (all 249 locked)")
}

// sweep deletes leftover namespaces and veths of this /24.
func (topo *Topology) sweep() {
	prefix := fmt.Sprintf("ward-%d-", topo.index)
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				_ = ip("netns", "del", e.Name())
			}
		}
	}
	if root := CgroupRoot(); root != "" {
		if ents, err := os.ReadDir(root); err == nil {
			for _, e := range ents {
				if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
					_ = (&Cgroup{Path: filepath.Join(root, e.Name())}).remove()
				}
			}
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return
	}
	hp := fmt.Sprintf("wd%d-", topo.index)
	for _, ifc := range ifs {
		if strings.HasPrefix(ifc.Name, hp) {
			_ = ip("link", "del", ifc.Name)
		}
	}
}

// Pods returns the pods in creation order.
func (topo *Topology) Pods() []*Pod {
	topo.mu.Lock()
	defer topo.mu.Unlock()
	return append([]*Pod(nil), topo.pods...)
}

// Pod returns the pod with that name, or nil.
func (topo *Topology) Pod(name string) *Pod {
	topo.mu.Lock()
	defer topo.mu.Unlock()
	for _, p := range topo.pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// AddPod creates a pod; it fails the test on error.
func (topo *Topology) AddPod(t testing.TB, cfg PodConfig) *Pod {
	t.Helper()
	p, err := topo.Add(cfg)
	if err != nil {
		t.Fatalf("netns: add pod %q: %v", cfg.Name, err)
	}
	return p
}

// Add creates a pod: namespace, veth pair, addresses, routes, static
// neighbours. On error nothing of the pod is left behind.
func (topo *Topology) Add(cfg PodConfig) (*Pod, error) {
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, " /\t") {
		return nil, fmt.Errorf("invalid pod name %q", cfg.Name)
	}
	topo.mu.Lock()
	if topo.lock == nil {
		topo.mu.Unlock()
		return nil, errors.New("topology closed")
	}
	for _, p := range topo.pods {
		if p.Name == cfg.Name {
			topo.mu.Unlock()
			return nil, fmt.Errorf("pod %q exists", cfg.Name)
		}
	}
	n := topo.nextHost
	topo.nextHost++
	topo.mu.Unlock()
	if n > 250 {
		return nil, errors.New("topology full (250 pods)")
	}
	addr := cfg.IP
	if !addr.IsValid() {
		addr = netip.AddrFrom4([4]byte{10, 200, byte(topo.index), byte(n)})
	}
	if !addr.Is4() {
		return nil, fmt.Errorf("pod %q: only IPv4 addresses are supported, got %s", cfg.Name, addr)
	}
	p := &Pod{
		Name:    cfg.Name,
		Labels:  cfg.Labels,
		IP:      addr,
		NetNS:   fmt.Sprintf("ward-%d-%s", topo.index, cfg.Name),
		HostIf:  fmt.Sprintf("wd%d-%d", topo.index, n),
		HostMAC: net.HardwareAddr{0x02, 0x77, byte(topo.index), byte(n), 0, 1},
		PodMAC:  net.HardwareAddr{0x02, 0x77, byte(topo.index), byte(n), 0, 2},
		topo:    topo,
	}
	p.NetNSPath = filepath.Join("/run/netns", p.NetNS)
	if cfg.IPv6 {
		p.IPv6 = ip6(topo.index, n)
	}
	if CgroupRoot() != "" {
		cg, err := topo.newCgroup(cfg.Name)
		if err != nil {
			return nil, err
		}
		p.Cgroup = cg
	}
	if err := p.create(cfg.Routes); err != nil {
		p.destroy()
		return nil, err
	}
	topo.mu.Lock()
	topo.pods = append(topo.pods, p)
	topo.mu.Unlock()
	return p, nil
}

func (p *Pod) create(extra []netip.Prefix) error {
	host := p.topo.HostIP.String()
	steps := [][]string{
		{"netns", "add", p.NetNS},
		{"link", "add", p.HostIf, "address", p.HostMAC.String(), "type", "veth",
			"peer", "name", "eth0", "address", p.PodMAC.String(), "netns", p.NetNS},
		{"-n", p.NetNS, "link", "set", "lo", "up"},
		{"-n", p.NetNS, "addr", "add", p.IP.String() + "/32", "dev", "eth0"},
		{"-n", p.NetNS, "link", "set", "eth0", "up"},
		{"-n", p.NetNS, "route", "add", GatewayIP.String(), "dev", "eth0", "scope", "link"},
		{"-n", p.NetNS, "neigh", "replace", GatewayIP.String(), "lladdr", p.HostMAC.String(), "dev", "eth0", "nud", "permanent"},
		{"-n", p.NetNS, "route", "add", PodCIDR.String(), "via", GatewayIP.String(), "dev", "eth0", "src", p.IP.String()},
		{"addr", "add", host + "/32", "dev", p.HostIf},
		{"link", "set", p.HostIf, "up"},
		{"route", "add", p.IP.String() + "/32", "dev", p.HostIf, "src", host},
		{"neigh", "replace", p.IP.String(), "lladdr", p.PodMAC.String(), "dev", p.HostIf, "nud", "permanent"},
	}
	for _, r := range extra {
		if r.Addr().Is6() {
			continue // below, with the pod's IPv6 address
		}
		steps = append(steps, []string{"-n", p.NetNS, "route", "add", r.String(), "via", GatewayIP.String(), "dev", "eth0", "src", p.IP.String()})
	}
	if p.IPv6.IsValid() {
		h6, gw6 := p.topo.HostIPv6.String(), GatewayIPv6.String()
		steps = append(steps,
			[]string{"-n", p.NetNS, "-6", "addr", "add", p.IPv6.String() + "/128", "dev", "eth0", "nodad"},
			[]string{"-n", p.NetNS, "-6", "neigh", "replace", gw6, "lladdr", p.HostMAC.String(), "dev", "eth0", "nud", "permanent"},
			[]string{"-n", p.NetNS, "-6", "route", "add", PodCIDR6.String(), "via", gw6, "dev", "eth0", "src", p.IPv6.String()},
			[]string{"-6", "addr", "add", gw6 + "/64", "dev", p.HostIf, "nodad"},
			[]string{"-6", "addr", "add", h6 + "/128", "dev", p.HostIf, "nodad"},
			[]string{"-6", "route", "add", p.IPv6.String() + "/128", "dev", p.HostIf, "src", h6},
			[]string{"-6", "neigh", "replace", p.IPv6.String(), "lladdr", p.PodMAC.String(), "dev", p.HostIf, "nud", "permanent"},
		)
		for _, r := range extra {
			if r.Addr().Is6() {
				steps = append(steps, []string{"-n", p.NetNS, "-6", "route", "add", r.String(), "via", gw6, "dev", "eth0", "src", p.IPv6.String()})
			}
		}
	}
	for _, s := range steps {
		// Steps without "-n" are the host side's: the root namespace, or
		// the node's own (NewNode).
		run := p.topo.hostIP
		if s[0] == "-n" || s[0] == "netns" {
			run = ip
		}
		if err := run(s...); err != nil {
			return err
		}
	}
	return p.topo.hostDo(func() error {
		// Per-device sysctls only: IPv4 forwarding is decided by the input
		// device's own "forwarding" flag (ip_route_input_slow), so the host's
		// global ip_forward stays as it is.
		for k, v := range map[string]string{"forwarding": "1", "rp_filter": "0"} {
			if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", p.HostIf, k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s.%s: %w", p.HostIf, k, err)
			}
		}
		if p.IPv6.IsValid() {
			// Per-device IPv6 forwarding (Linux 6.17+), the host's global
			// forwarding setting stays as it is.
			if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", p.HostIf, "force_forwarding"), []byte("1"), 0o644); err != nil {
				return fmt.Errorf("sysctl %s.force_forwarding (needs Linux 6.17+ for per-device IPv6 forwarding): %w", p.HostIf, err)
			}
		}
		ifc, err := net.InterfaceByName(p.HostIf)
		if err != nil {
			return fmt.Errorf("host veth %s: %w", p.HostIf, err)
		}
		p.HostIfIndex = ifc.Index
		return nil
	})
}

func (p *Pod) destroy() error {
	var errs []error
	// A NewNode topology's veths go with the pod's namespace.
	if _, err := net.InterfaceByName(p.HostIf); err == nil && p.topo.host == nil {
		if err := ip("link", "del", p.HostIf); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat(p.NetNSPath); err == nil {
		if err := ip("netns", "del", p.NetNS); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.Cgroup.remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Remove deletes one pod.
func (topo *Topology) Remove(name string) error {
	topo.mu.Lock()
	var p *Pod
	for i, q := range topo.pods {
		if q.Name == name {
			p = q
			topo.pods = append(topo.pods[:i], topo.pods[i+1:]...)
			break
		}
	}
	topo.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no pod %q", name)
	}
	return p.destroy()
}

// Close deletes every pod and releases the /24. It is idempotent.
func (topo *Topology) Close() error {
	topo.mu.Lock()
	pods := topo.pods
	topo.pods = nil
	cgroups := topo.cgroups
	topo.cgroups = nil
	lock := topo.lock
	topo.lock = nil
	topo.mu.Unlock()
	var errs []error
	for _, p := range pods {
		if err := p.destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cg := range cgroups {
		if err := cg.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	if lock != nil {
		topo.sweep()
		lock.Close() // releases the flock
	}
	return errors.Join(errs...)
}

// Do runs fn on an OS thread switched into the pod's network namespace.
// Sockets fn creates stay in the pod's namespace after Do returns. fn must
// not start goroutines that expect to be in the namespace (they are not).
func (p *Pod) Do(fn func() error) error {
	return doInNetNS(p.NetNSPath, fn)
}

func doInNetNS(path string, fn func() error) error {
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A fresh goroutine whose thread is thrown away if it cannot switch
	// back, so no other goroutine ever runs in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener in the pod's namespace (net.Listen semantics).
func (p *Pod) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := p.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket in the pod's namespace.
func (p *Pod) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := p.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial connects from the pod's namespace. The socket is created (and the
// connection attempted) in the namespace.
func (p *Pod) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	// The dialer's socket is created on the calling thread, so dial inside
	// Do; ctx bounds the wait.
	err := p.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command returns a command running name in the pod's namespace through
// `ip netns exec`, inside the pod's cgroup.
func (p *Pod) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NetNS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if p.Cgroup != nil {
		if err := p.Cgroup.apply(cmd); err != nil {
			// Start reports it.
			cmd.Err = err
		}
	}
	return cmd
}

// Run runs a command in the pod's namespace and returns its combined
// output.
func (p *Pod) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := p.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), p.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
