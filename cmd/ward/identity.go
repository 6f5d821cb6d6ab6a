package main

import (
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"

	"github.com/wardproxy/ward/agent/api"
)

const identityUsage = `usage:
  ward identity list    [--state-dir DIR] [-o table|json]
  ward identity get ID  [--state-dir DIR] [-o table|json]

The security identities the live agent knows (reserved, endpoint, cidr,
fqdn) and their labels.
`

func runIdentity(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "list":
			return identityList(args[1:], stdout, stderr)
		case "get":
			return identityGet(args[1:], stdout, stderr)
		case "-h", "--help", "help":
			fmt.Fprint(stdout, identityUsage)
			return 0
		}
	}
	fmt.Fprint(stderr, identityUsage)
	return 2
}

func identityList(args []string, stdout, stderr io.Writer) int {
	f := newAgentFlags("ward identity list", stderr)
	if _, ok := f.parse(args); !ok {
		return 2
	}
	var ids []api.Identity
	if err := agentGet(*f.stateDir, api.IdentitiesPath, &ids); err != nil {
		fmt.Fprintf(stderr, "ward identity list: %v\n", err)
		return 1
	}
	if f.json() {
		return printJSON(stdout, stderr, "ward identity list", ids)
	}
	return printIdentities(stdout, stderr, "ward identity list", ids)
}

func identityGet(args []string, stdout, stderr io.Writer) int {
	f := newAgentFlags("ward identity get", stderr)
	pos, ok := f.parse(args)
	if !ok {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprint(stderr, identityUsage)
		return 2
	}
	var id api.Identity
	if err := agentGet(*f.stateDir, api.IdentitiesPath+"/"+url.PathEscape(pos[0]), &id); err != nil {
		fmt.Fprintf(stderr, "ward identity get: %v\n", err)
		return 1
	}
	if f.json() {
		return printJSON(stdout, stderr, "ward identity get", id)
	}
	return printIdentities(stdout, stderr, "ward identity get", []api.Identity{id})
}

// printIdentities is Cilium's `identity list` table: one label per line.
func printIdentities(stdout, stderr io.Writer, cmd string, ids []api.Identity) int {
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tLABELS")
	for _, id := range ids {
		labels := id.Labels
		if len(labels) == 0 {
			labels = []string{""}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", id.ID, id.Kind, labels[0])
		for _, l := range labels[1:] {
			fmt.Fprintf(tw, "\t\t%s\n", l)
		}
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return 1
	}
	return 0
}
