package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/wardproxy/ward/agent/api"
)

// runStatus asks wardd (over its status socket) what it serves and what
// Envoy acknowledged, and prints it.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "/var/run/ward", "wardd's state directory")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	output := fs.String("o", "table", "output: table or json (as --json)")
	verbose := fs.Bool("verbose", false, "also the endpoints' enforcement, and the identities, ipcache and FQDN cache sizes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output == "json" {
		*asJSON = true
	}
	sock := filepath.Join(*stateDir, api.Socket)
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := cl.Get("http://wardd" + api.StatusPath)
	if err != nil {
		fmt.Fprintf(stderr, "ward status: wardd is not answering on %s: %v (is wardd running with --state-dir %s?)\n", sock, err, *stateDir)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintf(stderr, "ward status: %v\n", err)
		return 1
	}
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	var st api.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "ward status: bad answer: %v\n", err)
		return 1
	}
	if st.Envoy != nil {
		fmt.Fprintf(stdout, "envoy: pid %d, started %d time(s)\n", st.Envoy.PID, st.Envoy.Starts)
		if st.Envoy.LastError != "" {
			fmt.Fprintf(stdout, "envoy last error: %s\n", st.Envoy.LastError)
		}
	} else {
		fmt.Fprintln(stdout, "envoy: not supervised by wardd")
	}
	fmt.Fprintf(stdout, "xds streams: %d\n", st.Streams)
	types := make([]string, 0, len(st.Acked))
	for k := range st.Acked {
		types = append(types, k)
	}
	sort.Strings(types)
	for _, k := range types {
		fmt.Fprintf(stdout, "acked %s: %s\n", k, st.Acked[k])
	}
	for _, n := range st.NACKs {
		fmt.Fprintf(stdout, "rejected %s (still running %q): %s\n", n.TypeURL, n.Version, n.Message)
	}
	dtypes := make([]string, 0, len(st.Delivery))
	for k := range st.Delivery {
		dtypes = append(dtypes, k)
	}
	sort.Strings(dtypes)
	for _, k := range dtypes {
		d := st.Delivery[k]
		fmt.Fprintf(stdout, "delivered %s: %d of %d applied by the proxy\n", k, d.Acked, d.Total)
		for _, r := range d.NotApplied {
			if r.Error != "" {
				fmt.Fprintf(stdout, "  rejected %s (its previous version stays in force): %s\n", r.Name, r.Error)
			} else {
				fmt.Fprintf(stdout, "  pending %s\n", r.Name)
			}
		}
	}
	if p := st.Policy; p != nil {
		if p.Dir != "" {
			fmt.Fprintf(stdout, "policy: %s, revision %d\n", p.Dir, p.Revision)
		} else {
			fmt.Fprintf(stdout, "policy: revision %d\n", p.Revision) // from Kubernetes only
		}
		if p.Error != "" && len(p.Errors) == 0 {
			fmt.Fprintf(stdout, "policy directory: %s\n", p.Error)
		}
		for _, e := range p.Errors {
			fmt.Fprintf(stdout, "policy file not loaded (its last good version stays in force): %s: %s\n", e.File, e.Error)
		}
	}
	printKubernetes(stdout, st.Kubernetes)
	for _, e := range st.Errors {
		fmt.Fprintf(stdout, "error: %s\n", e)
	}
	for _, e := range st.EndpointFiles {
		fmt.Fprintf(stdout, "endpoint file not loaded (its endpoints stay as they were): %s: %s\n", e.File, e.Error)
	}
	for _, e := range st.Endpoints {
		fmt.Fprintf(stdout, "endpoint %s (id %d, identity %d, %s): %s", e.Name, e.ID, e.Identity, strings.Join(e.IPs, ","), e.State)
		if e.Error != "" {
			fmt.Fprintf(stdout, ": %s", e.Error)
		}
		fmt.Fprintln(stdout)
	}
	if *verbose {
		return statusVerbose(*stateDir, stdout, stderr)
	}
	return 0
}
