package redirect

import (
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestAddEndpointIPv6Change: an endpoint registered again with another
// IPv6 address (or none) keeps no endpoint-map entry for the old one, so
// the old address is no longer taken for the endpoint's own (a pod that
// gets it later is not confused with this one, nor can this one send from
// it past the source check).
func TestAddEndpointIPv6Change(t *testing.T) {
	testenv.RequireRoot(t)
	topo := netns.New(t)
	p := topo.AddPod(t, netns.PodConfig{Name: "a", IPv6: true})
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		Cleanup(dir)
		unix.Unmount(dir, unix.MNT_DETACH)
	})
	d, err := Load(Config{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	keys := func() []netip.Addr {
		var (
			k   datapathEndpointKey
			v   datapathEndpointInfo
			out []netip.Addr
		)
		it := d.objs.WardEndpoints.Iterate()
		for it.Next(&k, &v) {
			if v.Id == 7 {
				out = append(out, wordsAddr(k.Family, k.Addr))
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}
	other := netip.MustParseAddr("fd00:200:ff::7")
	ep := Endpoint{ID: 7, IP: p.IP, IPv6: p.IPv6, IfIndex: p.HostIfIndex, Identity: 5000}
	for _, step := range []struct {
		name string
		v6   netip.Addr
	}{{"first", p.IPv6}, {"changed", other}, {"removed", netip.Addr{}}, {"back", p.IPv6}} {
		ep.IPv6 = step.v6
		if err := d.AddEndpoint(ep); err != nil {
			t.Fatalf("%s: AddEndpoint: %v", step.name, err)
		}
		want := []netip.Addr{p.IP}
		if step.v6.IsValid() {
			want = append(want, step.v6)
		}
		slices.SortFunc(want, netip.Addr.Compare)
		if got := keys(); !slices.Equal(got, want) {
			t.Errorf("%s: endpoint map holds %v for the endpoint; want %v", step.name, got, want)
		}
	}
	if err := d.RemoveEndpoint(7); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 0 {
		t.Errorf("after RemoveEndpoint: %v left", got)
	}
}
