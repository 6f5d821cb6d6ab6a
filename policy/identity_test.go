package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestReservedIdentities(t *testing.T) {
	want := map[string]NumericIdentity{
		"host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5, "remote-node": 6,
		"kube-apiserver": 7, "ingress": 8, "world-ipv4": 9, "world-ipv6": 10,
	}
	a := NewAllocator()
	for name, id := range want {
		got, ok := ReservedIdentity(name)
		if !ok || got != id {
			t.Errorf("%s = %v, want %d", name, got, id)
		}
		ident, ok := a.Lookup(id)
		if !ok || !ident.Labels.Has(SourceReserved, name) {
			t.Errorf("allocator %d = %+v", id, ident)
		}
		if id.String() != name {
			t.Errorf("String(%d) = %q", id, id.String())
		}
	}
	if _, ok := ReservedIdentity("any"); ok {
		t.Error("any is not a reserved identity")
	}
}

func TestAllocator(t *testing.T) {
	a := NewAllocator()
	web := K8sLabels(map[string]string{"app": "web"}, "default")
	i1, isNew, err := a.Allocate(web)
	if err != nil || !isNew || i1.ID != MinCluster {
		t.Fatalf("first = %v %v %v", i1, isNew, err)
	}
	i2, isNew, _ := a.Allocate(K8sLabels(map[string]string{"app": "web"}, "default"))
	if isNew || i2 != i1 {
		t.Error("same labels, different identity")
	}
	db, _, _ := a.Allocate(K8sLabels(map[string]string{"app": "db"}, "default"))
	if db.ID != MinCluster+1 {
		t.Errorf("db = %d", db.ID)
	}
	cidr, _, _ := a.Allocate(CIDRLabels(netip.MustParsePrefix("10.0.0.0/8")))
	if cidr.ID != MinLocal || !cidr.Prefix.IsValid() || cidr.Prefix.Bits() != 8 {
		t.Errorf("cidr = %+v", cidr)
	}
	fq, _, _ := a.Allocate(NewLabels(Label{Source: SourceFQDN, Key: "a.com"}, Label{Source: SourceReserved, Key: "world"}))
	if fq.ID != MinLocal+1 || !fq.ID.IsLocal() {
		t.Errorf("fqdn = %d", fq.ID)
	}
	// Two references: the first release keeps it.
	if a.Release(i1.ID) {
		t.Error("released with a reference left")
	}
	if !a.Release(i1.ID) {
		t.Error("not released")
	}
	if _, ok := a.Lookup(i1.ID); ok {
		t.Error("still allocated")
	}
	if a.Release(IdentityHost) {
		t.Error("reserved identity released")
	}
	// Numbers are not reused immediately.
	n, _, _ := a.Allocate(K8sLabels(map[string]string{"app": "new"}, "default"))
	if n.ID != MinCluster+2 {
		t.Errorf("new = %d", n.ID)
	}
}

func TestAllocatorExhaustion(t *testing.T) {
	a := NewAllocator()
	a.nextCluster = MaxCluster
	if _, _, err := a.Allocate(K8sLabels(map[string]string{"a": "1"}, "")); err != nil {
		t.Fatal(err)
	}
	id, _, err := a.Allocate(K8sLabels(map[string]string{"a": "2"}, ""))
	if err != nil || id.ID != MinCluster {
		t.Fatalf("wrap: %v %v", id, err)
	}
	// Fill the whole range.
	for id := MinCluster; id <= MaxCluster; id++ {
		if _, ok := a.byID[id]; !ok {
			a.byID[id] = &allocation{ident: &Identity{ID: id}, refs: 1}
		}
	}
	if _, _, err := a.Allocate(K8sLabels(map[string]string{"a": "3"}, "")); err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Errorf("err = %v", err)
	}
	// Local identities are a separate range.
	if _, _, err := a.Allocate(CIDRLabels(netip.MustParsePrefix("10.0.0.0/8"))); err != nil {
		t.Error(err)
	}
}

func TestLabelsAndSelectors(t *testing.T) {
	ls := K8sLabels(map[string]string{"app": "web", "k8s:tier": "front", "reserved:x": ""}, "prod")
	if !ls.Has(SourceK8s, "tier") || !ls.Has(SourceReserved, "x") || !ls.Has(SourceAny, LabelNamespace) {
		t.Errorf("labels = %v", ls)
	}
	for _, c := range []struct {
		sel  EndpointSelector
		want bool
	}{
		{EndpointSelector{}, true},
		{EndpointSelector{MatchLabels: map[string]string{"app": "web"}}, true},
		{EndpointSelector{MatchLabels: map[string]string{"k8s:app": "web"}}, true},
		{EndpointSelector{MatchLabels: map[string]string{"reserved:app": "web"}}, false},
		{EndpointSelector{MatchLabels: map[string]string{"any:app": "web"}}, true},
		{EndpointSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "app", Operator: OpIn, Values: []string{"db", "web"}}}}, true},
		{EndpointSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "app", Operator: OpNotIn, Values: []string{"web"}}}}, false},
		{EndpointSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "missing", Operator: OpNotIn, Values: []string{"web"}}}}, true},
		{EndpointSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: OpExists}}}, true},
		{EndpointSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: OpDoesNotExist}}}, false},
		{EndpointSelector{MatchLabels: map[string]string{"app": "web"}, MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: OpDoesNotExist}}}, false},
	} {
		if got := compileSelector(&c.sel).matches(ls); got != c.want {
			t.Errorf("%+v: got %v", c.sel, got)
		}
	}
	a := compileSelector(&EndpointSelector{MatchLabels: map[string]string{"b": "1", "a": "2"}})
	b := compileSelector(&EndpointSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "a", Operator: OpIn, Values: []string{"2"}}, {Key: "b", Operator: OpIn, Values: []string{"1"}}}})
	if a.key != b.key {
		t.Errorf("equivalent selectors differ: %s %s", a.key, b.key)
	}
}
