package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/wardproxy/ward/agent/api"
)

const ipUsage = `usage:
  ward ip list [--state-dir DIR] [-o table|json]

The live agent's ipcache (the datapath's prefix → identity map): each
prefix, the identity in force, the owner of that claim (endpoint: a
workload's or a node's address; cidr: a toCIDR/fromCIDR prefix; fqdn: an IP
the DNS proxy learnt from an allowed answer) and the identity's labels.
`

func runIP(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "list" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, ipUsage)
			return 0
		}
		fmt.Fprint(stderr, ipUsage)
		return 2
	}
	f := newAgentFlags("ward ip list", stderr)
	if _, ok := f.parse(args[1:]); !ok {
		return 2
	}
	var es []api.IPCacheEntry
	if err := agentGet(*f.stateDir, api.IPCachePath, &es); err != nil {
		fmt.Fprintf(stderr, "ward ip list: %v\n", err)
		return 1
	}
	if f.json() {
		return printJSON(stdout, stderr, "ward ip list", es)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tIDENTITY\tSOURCE\tLABELS")
	for _, e := range es {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", e.Prefix, e.Identity, e.Source, strings.Join(e.Labels, " "))
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "ward ip list: %v\n", err)
		return 1
	}
	return 0
}
