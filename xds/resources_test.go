package xds

import (
	"slices"
	"testing"

	"github.com/wardproxy/ward/xds/npds"
)

func pol(name, ip string) *npds.NetworkPolicy {
	return &npds.NetworkPolicy{Name: name, EndpointIps: []string{ip}}
}

// TestResyncAfterNACK: resources a NACK names are sent again with the next
// change of the type, although they did not change; the status follows
// what the client applied and rejected.
func TestResyncAfterNACK(t *testing.T) {
	srv, c := startDelta(t)
	v1 := srv.SetPolicies([]*npds.NetworkPolicy{pol("a", "10.0.0.1"), pol("b", "10.0.0.2"), pol("c", "10.0.0.3")})
	r1 := c.recv()
	if got := names(r1); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("first response carries %v; want a b c", got)
	}
	c.nack(r1, "a")

	v2 := srv.SetPolicies([]*npds.NetworkPolicy{pol("a", "10.0.0.1"), pol("b", "10.0.0.9"), pol("c", "10.0.0.3")})
	r2 := c.recv()
	if got := names(r2); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("response after the NACK carries %v; want a (resent) and b (changed), not c", got)
	}
	if r2.GetSystemVersionInfo() != v2 {
		t.Errorf("response version %s; want %s", r2.GetSystemVersionInfo(), v2)
	}
	st := map[string]ResourceStatus{}
	for _, r := range srv.Resources(npds.NetworkPolicyType) {
		st[r.Name] = r
	}
	if a := st["a"]; a.Acked || a.Error != "bad a" || a.Version == "" {
		t.Errorf("status of a = %+v; want rejected with its error", a)
	}
	if b := st["b"]; b.Acked || b.Error != "" {
		t.Errorf("status of b = %+v; want not acked yet (its new version is in flight)", b)
	}
	if c := st["c"]; !c.Acked || c.Error != "" {
		t.Errorf("status of c = %+v; want acked", c)
	}
	if got := srv.Acked(npds.NetworkPolicyType); got == v1 {
		t.Errorf("acked = %s, the NACKed version", got)
	}

	c.ack(r2)
	if v := srv.SetPolicies([]*npds.NetworkPolicy{pol("a", "10.0.0.1"), pol("b", "10.0.0.9"), pol("c", "10.0.0.3")}); v != v2 {
		t.Errorf("an unchanged set got version %s; want the current %s", v, v2)
	}
	v3 := srv.SetPolicies([]*npds.NetworkPolicy{pol("a", "10.0.0.1"), pol("b", "10.0.0.9")})
	r3 := c.recv()
	if len(r3.GetResources()) != 0 || !slices.Equal(r3.GetRemovedResources(), []string{"c"}) {
		t.Errorf("response carries %v, removes %v; want only c removed (nothing resent after an ACK)", names(r3), r3.GetRemovedResources())
	}
	c.ack(r3)
	// A response to a change comes from the watch the previous ACK opened:
	// once it arrives, that ACK was observed.
	v4 := srv.SetPolicies([]*npds.NetworkPolicy{pol("a", "10.0.0.1"), pol("b", "10.0.0.8")})
	r4 := c.recv()
	if got := names(r4); !slices.Equal(got, []string{"b"}) {
		t.Errorf("response carries %v; want b", got)
	}
	if got := srv.Acked(npds.NetworkPolicyType); got != v3 {
		t.Errorf("acked = %s; want %s", got, v3)
	}
	c.ack(r4)
	srv.SetPolicies([]*npds.NetworkPolicy{pol("a", "10.0.0.1"), pol("b", "10.0.0.8"), pol("d", "10.0.0.4")})
	c.recv()
	if got := srv.Acked(npds.NetworkPolicyType); got != v4 {
		t.Errorf("acked = %s; want %s", got, v4)
	}
	for _, r := range srv.Resources(npds.NetworkPolicyType) {
		if want := r.Name != "d"; r.Acked != want || r.Error != "" {
			t.Errorf("status of %s = %+v; want acked %v, no error", r.Name, r, want)
		}
	}
}

// TestSetAllAgainstLastSet: a set compared with the last one place by
// place (the same message in the same place is unchanged without a
// look-up) still finds every change: a message replaced under its name, an
// equal copy (no change), a name replaced in place (added and removed),
// the same set in another order (no change).
func TestSetAllAgainstLastSet(t *testing.T) {
	srv, c := startDelta(t)
	set1 := []*npds.NetworkPolicy{pol("a", "10.0.0.1"), pol("b", "10.0.0.2"), pol("c", "10.0.0.3")}
	v1 := srv.SetPolicies(set1)
	c.ack(c.recv())
	if v := srv.SetPolicies(set1); v != v1 {
		t.Errorf("the same set again: version %s; want %s", v, v1)
	}

	set2 := slices.Clone(set1)
	set2[1] = pol("b", "10.0.0.9")
	v2 := srv.SetPolicies(set2)
	r2 := c.recv()
	if v2 == v1 || !slices.Equal(names(r2), []string{"b"}) || len(r2.GetRemovedResources()) != 0 {
		t.Fatalf("b changed in place: version %s (was %s), response %v removing %v; want b only", v2, v1, names(r2), r2.GetRemovedResources())
	}
	c.ack(r2)

	set3 := slices.Clone(set2)
	set3[1] = pol("b", "10.0.0.9") // an equal copy
	if v := srv.SetPolicies(set3); v != v2 {
		t.Errorf("an equal copy of b: version %s; want %s", v, v2)
	}

	set4 := slices.Clone(set3)
	set4[2] = pol("c", "10.0.0.8")
	v4 := srv.SetPolicies(set4)
	r4 := c.recv()
	if v4 == v2 || !slices.Equal(names(r4), []string{"c"}) {
		t.Fatalf("c changed after b's copy: version %s, response %v; want c only", v4, names(r4))
	}
	c.ack(r4)

	set5 := slices.Clone(set4)
	set5[0] = pol("d", "10.0.0.4") // a replaced by d in its place
	v5 := srv.SetPolicies(set5)
	r5 := c.recv()
	if v5 == v4 || !slices.Equal(names(r5), []string{"d"}) || !slices.Equal(r5.GetRemovedResources(), []string{"a"}) {
		t.Fatalf("a replaced by d: response %v removing %v; want d, removing a", names(r5), r5.GetRemovedResources())
	}
	c.ack(r5)

	set6 := []*npds.NetworkPolicy{set5[2], set5[0], set5[1]}
	if v := srv.SetPolicies(set6); v != v5 {
		t.Errorf("the same set in another order: version %s; want %s", v, v5)
	}
	var got []string
	for _, r := range srv.Resources(npds.NetworkPolicyType) {
		got = append(got, r.Name)
	}
	if !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("resources %v; want b c d", got)
	}
}
