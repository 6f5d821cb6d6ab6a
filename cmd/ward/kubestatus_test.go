package main

import (
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent/api"
)

func TestPrintKubernetes(t *testing.T) {
	var b strings.Builder
	down := time.Date(2026, 12, 2, 22, 0, 0, 0, time.UTC)
	printKubernetes(&b, &api.Kubernetes{Synced: true, DownSince: down, StaleSeconds: 42.4, LastError: "connection refused",
		Resources: map[string]int{"pods": 3, "ciliumnetworkpolicies": 2}, NotServed: []string{"ciliumclusterwidenetworkpolicies"},
		InvalidPolicies: []api.FileError{{File: "k8s:CiliumNetworkPolicy/ns/broken", Error: "spec.egress[0].toEntities[0]: unknown entity"}}})
	want := "kubernetes: API server unreachable since 2026-12-02T22:00:00Z: enforcing the state of 42s ago (connection refused)\n" +
		"  ciliumnetworkpolicies: 2\n  pods: 3\n" +
		"kubernetes resource not served (install its CRD): ciliumclusterwidenetworkpolicies\n" +
		"policy object invalid (its last good version, if any, stays in force): k8s:CiliumNetworkPolicy/ns/broken: spec.egress[0].toEntities[0]: unknown entity\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	printKubernetes(&b, &api.Kubernetes{Synced: true, Connected: true, SyncedAt: down, Pods: 5000, LocalPods: 10,
		Notes: []string{"1 pods without an IP yet are not endpoints: ns/p"}})
	want = "kubernetes: connected, synced 2026-12-02T22:00:00Z\n  pod endpoints: 5000 (10 on this node)\n" +
		"kubernetes: 1 pods without an IP yet are not endpoints: ns/p\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	printKubernetes(&b, nil)
	if b.Len() != 0 {
		t.Errorf("nil block printed %q", b.String())
	}
}
