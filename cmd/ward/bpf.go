package main

import (
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/wardproxy/ward/bpf/redirect"
)

const bpfUsage = `usage: ward bpf <command> [flags]

commands:
  cleanup    detach ward's tc programs, unpin its maps and links, remove the
             proxy routing rule (stops enforcement on this node)
  counters   print the datapath's verdict counters by reason and direction
  host-firewall status|audit|enforce|config|off
             the host firewall's state, audit mode, and its emergency off
             switch (ward bpf host-firewall help)

flags:
  -pin-dir DIR   bpffs directory wardd pins into (default /sys/fs/bpf/ward)
`

func runBPF(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, bpfUsage)
		return 2
	}
	if args[0] == "host-firewall" {
		return runHostFirewall(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("ward bpf "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	pinDir := fs.String("pin-dir", redirect.DefaultPinDir, "bpffs directory wardd pins into")
	keepRouting := fs.Bool("keep-routing", false, "cleanup: leave the proxy routing rule in place")
	table := fs.Int("routing-table", 0, "cleanup: the routing table of wardd's proxy routing (datapath.routingTable; 0: the default 2004)")
	priority := fs.Int("routing-priority", 0, "cleanup: the priority of wardd's proxy routing rule (datapath.routingPriority; 0: the default 9000)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	switch args[0] {
	case "cleanup":
		if err := redirect.Cleanup(*pinDir); err != nil {
			fmt.Fprintf(stderr, "ward bpf cleanup: %v\n", err)
			return 1
		}
		if !*keepRouting {
			redirect.RemoveProxyRouting(redirect.Routing{Table: *table, Priority: *priority})
		}
		fmt.Fprintf(stdout, "removed ward's BPF programs, maps and links under %s\n", *pinDir)
		return 0
	case "counters":
		cs, err := redirect.PinnedCounters(*pinDir)
		if err != nil {
			fmt.Fprintf(stderr, "ward bpf counters: %v\n", err)
			return 1
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "REASON\tDIRECTION\tVERDICT\tPACKETS\tBYTES")
		for _, c := range cs {
			v := "pass"
			if c.Reason.Drop() {
				v = "drop"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", c.Reason, c.Direction, v, c.Packets, c.Bytes)
		}
		tw.Flush()
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, bpfUsage)
		return 0
	}
	fmt.Fprintf(stderr, "ward bpf: unknown command %q\n%s", args[0], bpfUsage)
	return 2
}
