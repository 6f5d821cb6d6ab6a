package main

import (
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/wardproxy/ward/agent/api"
)

// printKubernetes prints the status's Kubernetes block: whether wardd's
// view of the cluster is current and, during an API-server outage, how
// stale the enforced state is.
func printKubernetes(w io.Writer, k *api.Kubernetes) {
	if k == nil {
		return
	}
	switch {
	case !k.Synced:
		fmt.Fprintf(w, "kubernetes: not synced yet (nothing published from it)")
	case k.Connected:
		fmt.Fprintf(w, "kubernetes: connected, synced %s", k.SyncedAt.Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "kubernetes: API server unreachable since %s: enforcing the state of %s ago", k.DownSince.Format(time.RFC3339),
			(time.Duration(k.StaleSeconds * float64(time.Second))).Round(time.Second))
	}
	if k.LastError != "" && !k.Connected {
		fmt.Fprintf(w, " (%s)", k.LastError)
	}
	fmt.Fprintln(w)
	names := make([]string, 0, len(k.Resources))
	for n := range k.Resources {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %s: %d\n", n, k.Resources[n])
	}
	if k.Pods > 0 {
		fmt.Fprintf(w, "  pod endpoints: %d (%d on this node)\n", k.Pods, k.LocalPods)
	}
	for _, n := range k.Notes {
		fmt.Fprintf(w, "kubernetes: %s\n", n)
	}
	for _, r := range k.NotServed {
		fmt.Fprintf(w, "kubernetes resource not served (install its CRD): %s\n", r)
	}
	for _, e := range k.InvalidPolicies {
		fmt.Fprintf(w, "policy object invalid (its last good version, if any, stays in force): %s: %s\n", e.File, e.Error)
	}
}
