// Command ward is the CLI of the ward network-policy suite: policy authoring
// (validate, test), node status, FQDN cache and BPF introspection.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: ward <command> [arguments]

commands:
  policy validate FILE|DIR...          check policies, exit 1 on errors
  policy test --policy P --flows F     evaluate flows offline
  policy get [LABEL...]                the live agent's rules and their source
  policy suggest [--file FLOWS]        a policy allowing the audited/dropped flows
  status [--verbose]                   show the node agent's state
  endpoint list | endpoint get ID      the node's endpoints: state, enforcement, rules
  endpoint config ID audit=on|off      policy audit mode of one endpoint, at runtime
  identity list | identity get ID      security identities and their labels
  ip list                              the ipcache: prefix -> identity
  monitor [--last N] [--follow]        show the node's flows (Hubble's Observer API)
  fqdn cache list | fqdn names         show the DNS proxy's FQDN cache
  bpf cleanup                          remove ward's BPF programs and maps
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "policy":
		return runPolicy(args[1:], stdout, stderr)
	case "status":
		return runStatus(args[1:], stdout, stderr)
	case "endpoint":
		return runEndpoint(args[1:], stdout, stderr)
	case "identity":
		return runIdentity(args[1:], stdout, stderr)
	case "ip":
		return runIP(args[1:], stdout, stderr)
	case "monitor":
		return runMonitor(args[1:], stdout, stderr)
	case "fqdn":
		return runFQDN(args[1:], stdout, stderr)
	case "bpf":
		return runBPF(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "ward: unknown command %q\n%s", args[0], usage)
	return 2
}
