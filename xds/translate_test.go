package xds

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

const deathstarL7 = `apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: rule1
spec:
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
`

func TestResourcesDeathstar(t *testing.T) {
	repo := policy.NewRepository(policy.Config{})
	ps, err := policy.Parse("p.yaml", []byte(deathstarL7))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		repo.Upsert(p)
	}
	ws := []Workload{
		{Name: "deathstar", ID: 1, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		{Name: "tiefighter", ID: 2, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, Remote: true},
		{Name: "xwing", ID: 3, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.3")}, Remote: true},
	}
	labels := map[uint64]map[string]string{1: {"org": "empire", "class": "deathstar"}, 2: {"org": "empire", "class": "tiefighter"}, 3: {"org": "alliance", "class": "xwing"}}
	for id, l := range labels {
		if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: id, Labels: policy.K8sLabels(l, "default")}); err != nil {
			t.Fatal(err)
		}
	}
	snap := repo.Snapshot()
	nps, hosts := Resources(snap, ws)
	ids := map[uint64]uint32{}
	for id := range labels {
		ep, _ := snap.Endpoint(id)
		ids[id] = uint32(ep.Identity)
	}
	if len(nps) != 1 || nps[0].GetName() != "deathstar" {
		t.Fatalf("policies = %v; want only the local deathstar", nps)
	}
	ing := nps[0].GetIngressPerPortPolicies()
	if len(ing) != 1 || ing[0].GetPort() != 80 || ing[0].GetProtocol() != npds.Protocol_TCP {
		t.Fatalf("ingress ports = %v; want TCP 80", ing)
	}
	rules := ing[0].GetRules()
	if len(rules) != 1 {
		t.Fatalf("rules = %v; want one", rules)
	}
	// org=empire selects deathstar and tiefighter, not xwing.
	remotes := map[uint32]bool{}
	for _, id := range rules[0].GetRemoteIdentities() {
		remotes[id] = true
	}
	if !remotes[ids[2]] || remotes[ids[3]] {
		t.Errorf("remote identities %v; want tiefighter's %d and not xwing's %d", rules[0].GetRemoteIdentities(), ids[2], ids[3])
	}
	got, err := rules[0].GetL7().Decode()
	if err != nil {
		t.Fatal(err)
	}
	want := &l7.Rules{HTTP: []l7.HTTPRule{{Method: "POST", Path: "/v1/request-landing"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("http rules (-want +got):\n%s", diff)
	}
	byID := map[uint32][]string{}
	for _, h := range hosts {
		byID[h.GetIdentity()] = h.GetHostAddresses()
	}
	for id, ip := range map[uint64]string{1: "10.0.0.1", 2: "10.0.0.2", 3: "10.0.0.3"} {
		if got := byID[ids[id]]; len(got) != 1 || got[0] != ip {
			t.Errorf("hosts of identity %d = %v; want [%s]", ids[id], got, ip)
		}
	}
}

// TestTranslationCache: an endpoint whose resolved policy (pointer), name
// and addresses are unchanged gets the same message back; a changed one is
// translated again; a gone one leaves the cache.
func TestTranslationCache(t *testing.T) {
	r := policy.NewRepository(policy.Config{})
	for i, app := range []string{"a", "b"} {
		if _, err := r.UpsertEndpoint(policy.Endpoint{ID: uint64(i + 1), Labels: policy.K8sLabels(map[string]string{"app": app}, "default")}); err != nil {
			t.Fatal(err)
		}
	}
	ws := []Workload{{Name: "a", ID: 1, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}, {Name: "b", ID: 2, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}}}
	var c TranslationCache
	ps1, _ := c.Resources(r.Snapshot(), ws)
	ps2, _ := c.Resources(r.Snapshot(), ws)
	if len(ps1) != 2 || ps1[0] != ps2[0] || ps1[1] != ps2[1] {
		t.Fatalf("unchanged endpoints translated again: %p %p / %p %p", ps1[0], ps2[0], ps1[1], ps2[1])
	}
	ws[1].IPs = []netip.Addr{netip.MustParseAddr("10.0.0.3")}
	ps3, _ := c.Resources(r.Snapshot(), ws)
	if ps3[0] != ps1[0] || ps3[1] == ps1[1] || ps3[1].EndpointIps[0] != "10.0.0.3" {
		t.Errorf("after b's address changed: a reused %v, b retranslated %v (%v)", ps3[0] == ps1[0], ps3[1] != ps1[1], ps3[1].EndpointIps)
	}
	c.Resources(r.Snapshot(), ws[:1])
	if _, ok := c.m[2]; ok {
		t.Error("a gone endpoint stayed in the cache")
	}
}

// TestTranslationCacheHosts: the identity table comes back as the same
// messages while no address or identity moved (a policy-only change), and
// is rebuilt when a workload's address, a workload or a CIDR identity
// changes.
func TestTranslationCacheHosts(t *testing.T) {
	r := policy.NewRepository(policy.Config{})
	for i, app := range []string{"a", "b"} {
		if _, err := r.UpsertEndpoint(policy.Endpoint{ID: uint64(i + 1), Labels: policy.K8sLabels(map[string]string{"app": app}, "default")}); err != nil {
			t.Fatal(err)
		}
	}
	ws := []Workload{{Name: "a", ID: 1, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}, {Name: "b", ID: 2, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, Remote: true}}
	var c TranslationCache
	_, h1 := c.Resources(r.Snapshot(), ws)
	_, h2 := c.Resources(r.Snapshot(), ws)
	if len(h1) != 2 || len(h2) != 2 || h1[0] != h2[0] || h1[1] != h2[1] {
		t.Fatalf("unchanged identity table rebuilt: %v / %v", h1, h2)
	}
	addrs := func(hs []*npds.NetworkPolicyHosts) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.HostAddresses...)
		}
		slices.Sort(out)
		return out
	}
	ws[1].IPs = []netip.Addr{netip.MustParseAddr("10.0.0.3")}
	_, h3 := c.Resources(r.Snapshot(), ws)
	if got, want := addrs(h3), []string{"10.0.0.1", "10.0.0.3"}; !slices.Equal(got, want) {
		t.Errorf("after b moved: %v; want %v", got, want)
	}
	_, h4 := c.Resources(r.Snapshot(), ws[:1])
	if got, want := addrs(h4), []string{"10.0.0.1"}; !slices.Equal(got, want) {
		t.Errorf("after b left: %v; want %v", got, want)
	}
	if _, err := r.UpsertEndpoint(policy.Endpoint{ID: 1, Labels: policy.K8sLabels(map[string]string{"app": "c"}, "default")}); err != nil {
		t.Fatal(err)
	}
	_, h5 := c.Resources(r.Snapshot(), ws[:1])
	if len(h5) != 1 || h5[0].Identity == h4[0].Identity {
		t.Errorf("after a's identity changed: %v (was %v)", h5, h4)
	}
}

// TestTranslationCacheSortedInPlace: the cache's policies are those of a
// full translation, in name order, through every kind of change: an
// unchanged publish hands out the last slice itself, a change under the
// same name replaces the policy in a new slice (the one handed out before
// is not modified), and renames, arrivals, departures and a local
// endpoint turning remote reorder the whole set.
func TestTranslationCacheSortedInPlace(t *testing.T) {
	r := policy.NewRepository(policy.Config{})
	apps := []string{"f", "b", "d", "a", "e", "c"}
	var ws []Workload
	for i, app := range apps {
		if _, err := r.UpsertEndpoint(policy.Endpoint{ID: uint64(i + 1), Labels: policy.K8sLabels(map[string]string{"app": app}, "default")}); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, Workload{Name: app, ID: uint64(i + 1), IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})}})
	}
	upsert := func(app, port string) {
		t.Helper()
		ps, err := policy.Parse("p.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p-`+app+`, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: `+app+`}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: f}}]
    toPorts:
    - ports: [{port: "`+port+`", protocol: TCP}]
      rules: {http: [{method: GET, path: "/`+port+`"}]}
`))
		if err != nil {
			t.Fatal(err)
		}
		r.Upsert(ps[0])
	}
	var c TranslationCache
	check := func(step string) []*npds.NetworkPolicy {
		t.Helper()
		got, _ := c.Resources(r.Snapshot(), ws)
		want, _ := Resources(r.Snapshot(), ws)
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Fatalf("%s: cached translation differs from a full one (-want +got):\n%s", step, diff)
		}
		return got
	}
	upsert("d", "80")
	ps1 := check("first")
	if ps2 := check("unchanged"); &ps2[0] != &ps1[0] {
		t.Error("an unchanged publish built a new slice")
	}
	kept := slices.Clone(ps1)
	upsert("d", "8080")
	ps3 := check("d's policy changed")
	if !slices.Equal(ps1, kept) {
		t.Error("the slice handed out before was modified")
	}
	if ps3[3] == ps1[3] || ps3[3].Name != "d" || ps3[0] != ps1[0] || ps3[5] != ps1[5] || !strings.Contains(ps3[3].String(), "/8080") {
		t.Errorf("after d's change: d retranslated %v (name %q), a kept %v, f kept %v", ps3[3] != ps1[3], ps3[3].Name, ps3[0] == ps1[0], ps3[5] == ps1[5])
	}
	ws[0].IPs = []netip.Addr{netip.MustParseAddr("10.0.1.1")} // f moves
	check("f's address changed")
	upsert("b", "443")
	check("b's policy changed")
	ws[1].Name = "z" // b renamed: last in order
	check("b renamed z")
	ws = append(ws, Workload{Name: "g", ID: 99, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.99")}})
	if _, err := r.UpsertEndpoint(policy.Endpoint{ID: 99, Labels: policy.K8sLabels(map[string]string{"app": "g"}, "default")}); err != nil {
		t.Fatal(err)
	}
	check("g arrived")
	ws[2].Remote = true // d turns remote
	check("d remote")
	ws = slices.Delete(ws, 3, 4) // a leaves
	check("a left")
	upsert("c", "81")
	check("c's policy changed")
	ws[2].Remote = false // d local again, with another endpoint's change
	upsert("e", "82")
	check("d local again, e's policy changed")
	check("unchanged again")
}

// TestTranslationCacheSecrets: a headerMatches secret reaches the filters
// as its value (the reference kept, so the filter never prints it); one
// that does not resolve keeps the policy's fallback value (none: nothing)
// and is reported; a changed secret is seen after Invalidate.
func TestTranslationCacheSecrets(t *testing.T) {
	ps, err := policy.Parse("p.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tok, namespace: sw}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - headerMatches:
          - {name: X-Token, secret: {name: tok}}
          - {name: X-Other, secret: {name: missing}, value: fallback}
          - {name: X-Plain, value: v}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := policy.NewRepository(policy.Config{})
	r.Upsert(ps[0])
	if _, err := r.UpsertEndpoint(policy.Endpoint{ID: 1, Labels: policy.K8sLabels(map[string]string{"app": "a"}, "sw")}); err != nil {
		t.Fatal(err)
	}
	ws := []Workload{{Name: "a", ID: 1, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}
	value := "one"
	var c TranslationCache
	c.Secrets = func(ns, name string) (string, error) {
		if ns == "sw" && name == "tok" {
			return value, nil
		}
		return "", errors.New("secret " + ns + "/" + name + ": not found")
	}
	matches := func() []*l7.HeaderMatch {
		t.Helper()
		nps, _ := c.Resources(r.Snapshot(), ws)
		rules, err := nps[0].IngressPerPortPolicies[0].Rules[0].L7.Decode()
		if err != nil {
			t.Fatal(err)
		}
		return rules.HTTP[0].HeaderMatches
	}
	hm := matches()
	if hm[0].Value != "one" || hm[0].Secret == nil || hm[0].Secret.Namespace != "sw" {
		t.Errorf("resolved secret = %+v; want its value with the reference sw/tok kept", hm[0])
	}
	if hm[1].Value != "fallback" || hm[2].Value != "v" || hm[2].Secret != nil {
		t.Errorf("unresolved / plain = %+v, %+v; want the fallback and the plain value", hm[1], hm[2])
	}
	if errs := c.SecretErrors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "sw/missing") || !c.UsesSecrets() {
		t.Errorf("SecretErrors = %v, UsesSecrets %v; want sw/missing's error, true", errs, c.UsesSecrets())
	}
	// Cached: the error is reported again, the old value kept until
	// Invalidate.
	value = "two"
	if hm := matches(); hm[0].Value != "one" || len(c.SecretErrors()) != 1 {
		t.Errorf("cached translation: %+v, errors %v; want the old value, the error again", hm[0], c.SecretErrors())
	}
	c.Invalidate()
	if hm := matches(); hm[0].Value != "two" {
		t.Errorf("after Invalidate: %+v; want the new value", hm[0])
	}
	// The repository's rules were not changed by the translation.
	p, _ := r.Snapshot().Endpoint(1)
	if v := p.Ingress.Proxy[0].Selections[0].Rules.HTTP[0].HeaderMatches[0].Value; v != "" {
		t.Errorf("the resolved policy's rule got the value %q; want it untouched", v)
	}
}
