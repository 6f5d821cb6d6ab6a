package policy

import (
	"testing"
)

func TestLabelFilterDefaults(t *testing.T) {
	f, err := NewLabelFilter(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		label string
		want  bool
	}{
		{"k8s:app=web", true},
		{"k8s:io.kubernetes.pod.namespace=prod", true},
		{"k8s:io.cilium.k8s.namespace.labels.team=a", true},
		{"k8s:io.cilium.k8s.policy.serviceaccount=sa", true},
		{"k8s:io.cilium.k8s.policy.cluster=c1", true},
		{"k8s:app.kubernetes.io/name=web", true},
		{"reserved:host", true},
		{"k8s:pod-template-hash=abc", false},
		{"k8s:controller-revision-hash=1", false},
		{"k8s:statefulset.kubernetes.io/pod-name=db-0", false},
		{"k8s:kubernetes.io/hostname=n1", false},
		{"k8s:io.kubernetes.pod.name=x", false},
		{"k8s:failure-domain.beta.kubernetes.io/zone=z", false},
		{"k8s:annotation.foo=bar", false},
	} {
		if got := f.Relevant(ParseLabel(tc.label, SourceK8s)); got != tc.want {
			t.Errorf("%s: relevant = %v, want %v", tc.label, got, tc.want)
		}
	}
}

func TestLabelFilterUserPrefixes(t *testing.T) {
	// An inclusive user prefix: only labels matching an inclusive prefix
	// (the user's or a default one) stay; the longer match wins.
	f, err := NewLabelFilter([]string{"k8s:app", "k8s:!app-version"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		label string
		want  bool
	}{
		{"k8s:app=web", true},
		{"k8s:app-version=3", false},
		{"k8s:tier=db", false},
		{"k8s:io.kubernetes.pod.namespace=prod", true},
		{"container:app=web", false}, // another source
	} {
		if got := f.Relevant(ParseLabel(tc.label, SourceK8s)); got != tc.want {
			t.Errorf("%s: relevant = %v, want %v", tc.label, got, tc.want)
		}
	}
	if _, err := NewLabelFilter([]string{"k8s:("}, nil); err == nil {
		t.Error("bad regexp accepted")
	}
	// A label prefix file replaces the defaults.
	f, err = NewLabelFilter(nil, []byte(`{"version":1,"valid-prefixes":[{"source":"k8s","prefix":"team"},{"source":"reserved","prefix":".*"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if !f.Relevant(ParseLabel("k8s:team=a", "")) || f.Relevant(ParseLabel("k8s:app=web", "")) {
		t.Error("label prefix file not applied")
	}
	if _, err := NewLabelFilter(nil, []byte(`{"version":2}`)); err == nil {
		t.Error("version 2 accepted")
	}
}

// TestIdentityRelevantLabels: endpoints differing only in labels that are
// not identity-relevant share an identity, and policies cannot select on
// those labels; changing the filter changes the identities.
func TestIdentityRelevantLabels(t *testing.T) {
	f, err := NewLabelFilter(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: hash}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {pod-template-hash: abc}}]
`
	e := newEnv(t, Config{LabelFilter: f}, doc)
	a := e.ep("default/app=client,pod-template-hash=abc")
	b := e.ep("default/app=client,pod-template-hash=def")
	pa, _ := e.repo.Resolve(a)
	pb, _ := e.repo.Resolve(b)
	if pa.Identity != pb.Identity {
		t.Errorf("identities %d and %d differ only by pod-template-hash", pa.Identity, pb.Identity)
	}
	e.check("default/app=client,pod-template-hash=abc", "default/app=web", ProtocolTCP, 80, "denied")

	// Without the filter (every label relevant) the two are distinct and
	// the selector on pod-template-hash matches.
	e2 := newEnv(t, Config{}, doc)
	a2 := e2.ep("default/app=client,pod-template-hash=abc")
	b2 := e2.ep("default/app=client,pod-template-hash=def")
	pa2, _ := e2.repo.Resolve(a2)
	pb2, _ := e2.repo.Resolve(b2)
	if pa2.Identity == pb2.Identity {
		t.Error("unfiltered identities are equal")
	}
	e2.check("default/app=client,pod-template-hash=abc", "default/app=web", ProtocolTCP, 80, "allowed")
}
