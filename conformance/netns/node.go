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
	"strings"
	"syscall"
	"testing"

	"github.com/wardproxy/ward/internal/testenv"
)

// Namespace is a bare network namespace the tests own: a node's host
// namespace, an underlay, the world outside the cluster.
type Namespace struct {
	// Name is the namespace name (for `ip netns exec`), Path its bind
	// mount.
	Name, Path string
}

func newNamespace(name string) (*Namespace, error) {
	ns := &Namespace{Name: name, Path: filepath.Join("/run/netns", name)}
	if _, err := os.Stat(ns.Path); err == nil {
		_ = ip("netns", "del", name)
	}
	if err := ip("netns", "add", name); err != nil {
		return nil, err
	}
	if err := ip("-n", name, "link", "set", "lo", "up"); err != nil {
		ns.Close()
		return nil, err
	}
	return ns, nil
}

// Close deletes the namespace (and the interfaces in it).
func (ns *Namespace) Close() error {
	if _, err := os.Stat(ns.Path); err != nil {
		return nil
	}
	return ip("netns", "del", ns.Name)
}

// Do runs fn on an OS thread switched into the namespace (see Pod.Do).
func (ns *Namespace) Do(fn func() error) error { return doInNetNS(ns.Path, fn) }

// IP runs `ip -n <ns> args...`.
func (ns *Namespace) IP(args ...string) error { return ip(append([]string{"-n", ns.Name}, args...)...) }

// Sysctl writes a sysctl of the namespace: key as a path below
// /proc/sys ("net/ipv4/conf/eth0/forwarding").
func (ns *Namespace) Sysctl(key, value string) error {
	return ns.Do(func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", key, ns.Name, err)
		}
		return nil
	})
}

// Command returns a command running name in the namespace through
// `ip netns exec` (its own process group, killed with ctx).
func (ns *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// Run runs a command in the namespace and returns its combined output.
func (ns *Namespace) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := ns.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Start starts cmd with the namespace as its network namespace (and
// nothing else of the caller's changed: mounts, cgroup, environment):
// the process is forked from a thread switched into the namespace.
func (ns *Namespace) Start(cmd *exec.Cmd) error {
	return doInNetNS(ns.Path, cmd.Start)
}

// Host returns the namespace the topology's pods are attached to: the
// node's own host namespace of a NewNode topology, nil (the root
// namespace) otherwise.
func (topo *Topology) Host() *Namespace { return topo.host }

// NewNode creates an empty topology whose host side is a network namespace
// of its own ("ward-S-_node"), not the root namespace: a node of a
// multi-node cluster. The pods' host-side veths, their routes and sysctls
// are in it; nothing is created in the root namespace. It needs root.
func NewNode(t testing.TB) *Topology {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	topo, err := newNodeTopology()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	host := topo.host
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("netns teardown: %v", err)
		}
		if err := host.Close(); err != nil {
			t.Errorf("netns teardown: %v", err)
		}
	})
	return topo
}

// CreateNode is NewNode for programs that are not tests (benchmarks): the
// caller must Close the topology, then its Host namespace. It needs root
// and the ip command.
func CreateNode() (*Topology, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("netns: needs root")
	}
	return newNodeTopology()
}

func newNodeTopology() (*Topology, error) {
	topo, err := newTopology()
	if err != nil {
		return nil, err
	}
	host, err := newNamespace(fmt.Sprintf("ward-%d-_node", topo.index))
	if err != nil {
		topo.Close()
		return nil, fmt.Errorf("node namespace: %w", err)
	}
	topo.host = host
	return topo, nil
}

// NewNamespace creates a bare namespace named "ward-S-_<name>" on the
// topology's /24 (an underlay, the world); it is deleted with the test.
func (topo *Topology) NewNamespace(t testing.TB, name string) *Namespace {
	t.Helper()
	ns, err := topo.CreateNamespace(name)
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("netns teardown: %v", err)
		}
	})
	return ns
}

// CreateNamespace is NewNamespace for programs that are not tests: the
// caller must Close the namespace.
func (topo *Topology) CreateNamespace(name string) (*Namespace, error) {
	return newNamespace(fmt.Sprintf("ward-%d-_%s", topo.index, name))
}

// hostIP runs an ip command on the topology's host side.
func (topo *Topology) hostIP(args ...string) error {
	if topo.host != nil {
		return topo.host.IP(args...)
	}
	return ip(args...)
}

// hostDo runs fn in the topology's host namespace.
func (topo *Topology) hostDo(fn func() error) error {
	if topo.host != nil {
		return topo.host.Do(fn)
	}
	return fn()
}

// Uplink is a node's "native device": a veth from the node's host
// namespace to a shared underlay namespace.
type Uplink struct {
	// Dev is the device in the node ("eth0"), Addr its address.
	Dev  string
	Addr netip.Prefix
}

// Connect gives a namespace a native device "eth0" with addr, its peer
// "peer" in the underlay, enslaved to the underlay's bridge "br0" (made
// on first use). IPv4 forwarding is turned on for the device (a node
// routes between its uplink and its pods).
func Connect(ns, underlay *Namespace, peer string, addr netip.Prefix) (Uplink, error) {
	if err := underlay.IP("link", "show", "br0"); err != nil {
		if err := underlay.IP("link", "add", "br0", "type", "bridge"); err != nil {
			return Uplink{}, err
		}
		if err := underlay.IP("link", "set", "br0", "up"); err != nil {
			return Uplink{}, err
		}
	}
	steps := [][]string{
		{"-n", underlay.Name, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns.Name},
		{"-n", underlay.Name, "link", "set", peer, "master", "br0", "up"},
		{"-n", ns.Name, "addr", "add", addr.String(), "dev", "eth0"},
		{"-n", ns.Name, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return Uplink{}, err
		}
	}
	for k, v := range map[string]string{"forwarding": "1", "rp_filter": "0"} {
		if err := ns.Sysctl("net/ipv4/conf/eth0/"+k, v); err != nil {
			return Uplink{}, err
		}
	}
	return Uplink{Dev: "eth0", Addr: addr}, nil
}

// AddIPv6 gives a namespace's native device (Connect) an IPv6 address
// too, with per-device IPv6 forwarding (Linux 6.17+): a dual-stack node on
// the underlay.
func AddIPv6(ns *Namespace, dev string, addr netip.Prefix) error {
	if err := ns.IP("-6", "addr", "add", addr.String(), "dev", dev, "nodad"); err != nil {
		return err
	}
	return ns.Sysctl("net/ipv6/conf/"+dev+"/force_forwarding", "1")
}

// Listen opens a listener in the namespace.
func (ns *Namespace) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}
