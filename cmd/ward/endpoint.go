package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wardproxy/ward/agent/api"
)

const endpointUsage = `usage:
  ward endpoint list    [--state-dir DIR] [-o table|json]
  ward endpoint get ID  [--state-dir DIR] [-o table|json]
  ward endpoint config ID audit=on|off  (see ward endpoint config --help)

list: the node's endpoints with their policy enforcement per direction
("Enabled", "Disabled", or "Disabled (Audit)" when policy audit mode lets
would-be drops through), identity, labels, IPs and lifecycle state
(restoring, waiting-for-identity, waiting-to-regenerate, regenerating,
ready, disconnecting; ward's own: waiting-for-interface, locked-down).
get: one endpoint, with the policy rules in force for it and their source.
`

func runEndpoint(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "list":
			return endpointList(args[1:], stdout, stderr)
		case "get":
			return endpointGet(args[1:], stdout, stderr)
		case "config":
			return endpointConfig(args[1:], stdout, stderr)
		case "-h", "--help", "help":
			fmt.Fprint(stdout, endpointUsage)
			return 0
		}
	}
	fmt.Fprint(stderr, endpointUsage)
	return 2
}

// agentFlags are the flags of every command that asks the live agent.
type agentFlags struct {
	fs       *flag.FlagSet
	stateDir *string
	output   *string
}

func newAgentFlags(name string, stderr io.Writer) agentFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return agentFlags{fs: fs,
		stateDir: fs.String("state-dir", "/var/run/ward", "wardd's state directory"),
		output:   fs.String("o", "table", "output: table or json"),
	}
}

// parse parses args (flags may follow the positional arguments) and
// returns the positional ones; ok is false on a usage error (reported).
func (f agentFlags) parse(args []string) ([]string, bool) {
	var pos []string
	for {
		if err := f.fs.Parse(args); err != nil {
			return nil, false
		}
		args = f.fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if *f.output != "table" && *f.output != "json" {
		fmt.Fprintf(f.fs.Output(), "%s: -o %q: want table or json\n", f.fs.Name(), *f.output)
		return nil, false
	}
	return pos, true
}

func (f agentFlags) json() bool { return *f.output == "json" }

// errNotFound is the agent's 404.
var errNotFound = errors.New("not found")

// agentGet GETs path from wardd's status socket in stateDir and decodes
// the JSON answer into v.
func agentGet(stateDir, path string, v any) error {
	sock := filepath.Join(stateDir, api.Socket)
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := cl.Get("http://wardd" + path)
	if err != nil {
		return fmt.Errorf("wardd is not answering on %s: %w (is wardd running with --state-dir %s?)", sock, err, stateDir)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s", errNotFound, strings.TrimSpace(string(body)))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("wardd answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("bad answer from wardd: %w", err)
	}
	return nil
}

// printJSON writes v indented.
func printJSON(stdout, stderr io.Writer, cmd string, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// enforcement is Cilium's POLICY ENFORCEMENT column.
func enforcement(enforced, audit bool) string {
	switch {
	case enforced && audit:
		return "Disabled (Audit)"
	case enforced:
		return "Enabled"
	}
	return "Disabled"
}

func endpointList(args []string, stdout, stderr io.Writer) int {
	f := newAgentFlags("ward endpoint list", stderr)
	if _, ok := f.parse(args); !ok {
		return 2
	}
	var eps []api.EndpointDetail
	if err := agentGet(*f.stateDir, api.EndpointsPath, &eps); err != nil {
		fmt.Fprintf(stderr, "ward endpoint list: %v\n", err)
		return 1
	}
	if f.json() {
		return printJSON(stdout, stderr, "ward endpoint list", eps)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tPOLICY (ingress)\tPOLICY (egress)\tIDENTITY\tLABELS (source:key[=value])\tIPs\tSTATUS")
	fmt.Fprintln(tw, "\tENFORCEMENT\tENFORCEMENT\t\t\t\t")
	for _, e := range eps {
		labels := e.Labels
		if len(labels) == 0 {
			labels = []string{""}
		}
		state := e.State
		if e.Error != "" {
			state += ": " + e.Error
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, enforcement(e.EnforceIngress, e.Audit), enforcement(e.EnforceEgress, e.Audit),
			e.Identity, labels[0], strings.Join(e.IPs, ","), state)
		for _, l := range labels[1:] {
			fmt.Fprintf(tw, "\t\t\t\t%s\t\t\n", l)
		}
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "ward endpoint list: %v\n", err)
		return 1
	}
	return 0
}

func endpointGet(args []string, stdout, stderr io.Writer) int {
	f := newAgentFlags("ward endpoint get", stderr)
	pos, ok := f.parse(args)
	if !ok {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprint(stderr, endpointUsage)
		return 2
	}
	var e api.EndpointDetail
	if err := agentGet(*f.stateDir, api.EndpointsPath+"/"+url.PathEscape(pos[0]), &e); err != nil {
		fmt.Fprintf(stderr, "ward endpoint get: %v\n", err)
		return 1
	}
	if f.json() {
		return printJSON(stdout, stderr, "ward endpoint get", e)
	}
	fmt.Fprintf(stdout, "endpoint:          %d\n", e.ID)
	fmt.Fprintf(stdout, "name:              %s/%s\n", e.Namespace, e.Name)
	fmt.Fprintf(stdout, "state:             %s\n", e.State)
	if e.Error != "" {
		fmt.Fprintf(stdout, "error:             %s\n", e.Error)
	}
	fmt.Fprintf(stdout, "identity:          %d\n", e.Identity)
	fmt.Fprintf(stdout, "labels:            %s\n", strings.Join(e.Labels, " "))
	fmt.Fprintf(stdout, "ips:               %s\n", strings.Join(e.IPs, " "))
	if e.Interface != "" {
		fmt.Fprintf(stdout, "interface:         %s\n", e.Interface)
	}
	fmt.Fprintf(stdout, "policy revision:   %d\n", e.PolicyRevision)
	fmt.Fprintf(stdout, "ingress policy:    %s\n", enforcement(e.EnforceIngress, e.Audit))
	fmt.Fprintf(stdout, "egress policy:     %s\n", enforcement(e.EnforceEgress, e.Audit))
	fmt.Fprintf(stdout, "policy audit mode: %s\n", map[bool]string{true: "Enabled", false: "Disabled"}[e.Audit])
	if len(e.Rules) == 0 {
		fmt.Fprintln(stdout, "rules:             none")
		return 0
	}
	fmt.Fprintln(stdout, "rules:")
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  POLICY\tSOURCE\tORIGIN\tSECTIONS\tLABELS")
	for _, r := range e.Rules {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.Policy, r.Source, r.Origin, strings.Join(r.Paths, ","), strings.Join(r.Labels, " "))
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "ward endpoint get: %v\n", err)
		return 1
	}
	return 0
}

// statusVerbose is what `ward status --verbose` adds: the endpoint table
// and the sizes of the identity table, the ipcache (by owner) and the DNS
// proxy's cache.
func statusVerbose(stateDir string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stdout)
	if code := endpointList([]string{"--state-dir", stateDir}, stdout, stderr); code != 0 {
		return code
	}
	var ids []api.Identity
	if err := agentGet(stateDir, api.IdentitiesPath, &ids); err != nil {
		fmt.Fprintf(stderr, "ward status: %v\n", err)
		return 1
	}
	kinds := map[string]int{}
	for _, id := range ids {
		kinds[id.Kind]++
	}
	fmt.Fprintf(stdout, "\nidentities: %d (reserved %d, endpoint %d, cidr %d, fqdn %d)\n", len(ids), kinds["reserved"], kinds["endpoint"], kinds["cidr"], kinds["fqdn"])
	var ipc []api.IPCacheEntry
	if err := agentGet(stateDir, api.IPCachePath, &ipc); err != nil {
		fmt.Fprintf(stderr, "ward status: %v\n", err)
		return 1
	}
	owners := map[string]int{}
	for _, e := range ipc {
		owners[e.Source]++
	}
	fmt.Fprintf(stdout, "ipcache: %d prefixes (endpoint %d, cidr %d, fqdn %d)\n", len(ipc), owners["endpoint"], owners["cidr"], owners["fqdn"])
	var fq []api.FQDNEntry
	switch err := agentGet(stateDir, api.FQDNCachePath, &fq); {
	case errors.Is(err, errNotFound):
		fmt.Fprintln(stdout, "fqdn cache: no DNS proxy")
	case err != nil:
		fmt.Fprintf(stderr, "ward status: %v\n", err)
		return 1
	default:
		zombies := 0
		for _, e := range fq {
			if e.Zombie {
				zombies++
			}
		}
		fmt.Fprintf(stdout, "fqdn cache: %d IPs of names (%d kept for live connections)\n", len(fq), zombies)
	}
	return 0
}
