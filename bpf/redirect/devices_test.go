package redirect_test

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/wardproxy/ward/bpf/redirect"
)

// TestAttachDeviceAcrossRestart: from_netdev's link on a native device is
// pinned, adopted by the next Load (one program, swapped in, never two)
// and removed by DetachDevice; the endpoints' links are not touched.
func TestAttachDeviceAcrossRestart(t *testing.T) {
	e := newEnv(t, redirect.Config{}, map[string]uint32{"deathstar": idDeathstar, "xwing": idXwing})
	// xwing's veth stands in for a native device.
	dev := e.pods["xwing"].HostIfIndex
	e.add(t, "deathstar", true, false)
	if err := e.dp.AttachDevice(dev); err != nil {
		t.Fatalf("AttachDevice: %v", err)
	}
	if err := e.dp.AttachDevice(dev); err != nil {
		t.Fatalf("AttachDevice again: %v", err)
	}
	attached := func(ifindex int) int {
		n, err := redirect.AttachedPrograms(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := attached(dev); n != 1 {
		t.Fatalf("programs on the device = %d; want 1 (from_netdev on ingress)", n)
	}
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	dp, err := redirect.Load(redirect.Config{PinDir: e.pinDir})
	if err != nil {
		t.Fatalf("Load after restart: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	if n := attached(dev); n != 1 {
		t.Fatalf("programs on the device after restart = %d; want 1", n)
	}
	r, err := link.QueryPrograms(link.QueryOptions{Target: dev, Attach: ebpf.AttachTCXIngress})
	if err != nil || len(r.Programs) != 1 {
		t.Fatalf("query the device's ingress: %v, %+v", err, r)
	}
	prog, err := ebpf.NewProgramFromID(r.Programs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	info, err := prog.Info()
	prog.Close()
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "from_netdev" {
		t.Fatalf("program on the device after restart = %q; want from_netdev", info.Name)
	}
	if err := dp.AttachDevice(dev); err != nil {
		t.Fatalf("AttachDevice after restart: %v", err)
	}
	if n := attached(dev); n != 1 {
		t.Fatalf("programs on the device after re-attach = %d; want 1", n)
	}
	if err := dp.DetachDevice(dev); err != nil {
		t.Fatalf("DetachDevice: %v", err)
	}
	if n := attached(dev); n != 0 {
		t.Errorf("programs on the device after DetachDevice = %d; want 0", n)
	}
	if n := attached(e.pods["deathstar"].HostIfIndex); n != 2 {
		t.Errorf("programs on the endpoint's veth = %d; want 2", n)
	}
}
