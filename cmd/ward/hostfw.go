package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/wardproxy/ward/bpf/redirect"
)

const hostFirewallUsage = `usage: ward bpf host-firewall <command> [flags]

The host firewall enforces host policies (nodeSelector) for the node itself
(docs/host-firewall.md). These commands act on the pinned datapath directly:
they work while wardd runs and when it is gone, and need no policy change.

commands:
  status     the host endpoint's enforcement, audit mode and devices
  audit      put the host endpoint in policy audit mode: would-be drops pass
             and are counted (host-audit in ward bpf counters)
  enforce    enforce the host policies (cancels audit mode, also the
             config's hostFirewall.audit)
  config     back to the node config's hostFirewall.audit
  off        EMERGENCY: detach the host firewall from every native device;
             all host traffic passes until wardd restarts (delete or fix the
             offending host policy first)

Runtime audit/enforce/off do not survive a restart of wardd (as in Cilium).

flags:
  -pin-dir DIR   bpffs directory wardd pins into (default /sys/fs/bpf/ward)
`

func runHostFirewall(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, hostFirewallUsage)
		return 2
	}
	fs := flag.NewFlagSet("ward bpf host-firewall "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	pinDir := fs.String("pin-dir", redirect.DefaultPinDir, "bpffs directory wardd pins into")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "ward bpf host-firewall %s: %v\n", args[0], err)
		return 1
	}
	mode := map[string]redirect.HostMode{"audit": redirect.HostModeAudit, "enforce": redirect.HostModeEnforce, "config": redirect.HostModeConfig}
	switch args[0] {
	case "status":
		st, err := redirect.PinnedHostState(*pinDir)
		if err != nil {
			return fail(err)
		}
		fmt.Fprint(stdout, formatHostState(st))
		return 0
	case "audit", "enforce", "config":
		if err := redirect.SetHostMode(*pinDir, mode[args[0]]); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "host firewall: mode %s\n", args[0])
		return 0
	case "off":
		devs, err := redirect.DetachPinnedHostFirewall(*pinDir)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "host firewall detached from %s: host traffic is not enforced until wardd restarts\n", deviceNames(devs))
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, hostFirewallUsage)
		return 0
	}
	fmt.Fprintf(stderr, "ward bpf host-firewall: unknown command %q\n%s", args[0], hostFirewallUsage)
	return 2
}

// formatHostState prints the host endpoint as `ward bpf host-firewall
// status` shows it.
func formatHostState(st redirect.HostState) string {
	dir := func(on bool) string {
		if !on {
			return "allow-all (no host policy)"
		}
		audit := st.Audit
		switch st.Mode {
		case redirect.HostModeAudit:
			audit = true
		case redirect.HostModeEnforce:
			audit = false
		}
		if audit {
			return "audit"
		}
		return "enforced"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "devices: %s\n", deviceNames(st.Devices))
	fmt.Fprintf(&b, "ingress: %s\n", dir(st.EnforceIngress))
	fmt.Fprintf(&b, "egress: %s\n", dir(st.EnforceEgress))
	fmt.Fprintf(&b, "override: %s\n", st.Mode)
	if st.Locked {
		b.WriteString("locked-down: the host policy could not be written (all host traffic on the devices dropped)\n")
	}
	return b.String()
}

func deviceNames(idx []int) string {
	if len(idx) == 0 {
		return "none (detached)"
	}
	var names []string
	for _, i := range idx {
		if ifc, err := net.InterfaceByIndex(i); err == nil {
			names = append(names, ifc.Name)
		} else {
			names = append(names, fmt.Sprintf("ifindex %d", i))
		}
	}
	return strings.Join(names, ", ")
}
