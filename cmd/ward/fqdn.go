package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wardproxy/ward/agent/api"
	dnsproxy "github.com/wardproxy/ward/filters/dns"
)

const fqdnUsage = `usage:
  ward fqdn cache list [--state-dir DIR | --state FILE] [--endpoint ID] [--name NAME] [-o table|json]
  ward fqdn names      [--state FILE] [-o table|json]

cache list asks the live agent (its status socket in --state-dir, default
/var/run/ward) for the DNS proxy's cache; with --state FILE (or
$WARD_FQDN_STATE) it reads the state file instead, which the DNS proxy
writes every GC interval when it changed and on shutdown (default for
names: $WARD_FQDN_STATE, else ` + dnsproxy.DefaultStateFile + `).
cache list: one line per endpoint, name and IP; SOURCE is "lookup" for an
IP within its TTL, "connection" for an expired IP kept because a connection
still uses it. names: per toFQDNs selector, the names and IPs it selects and
the identities those IPs carry in the ipcache.
`

func runFQDN(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) >= 2 && args[0] == "cache" && args[1] == "list":
		return fqdnCacheList(args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "names":
		return fqdnNames(args[1:], stdout, stderr)
	case len(args) >= 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help"):
		fmt.Fprint(stdout, fqdnUsage)
		return 0
	}
	fmt.Fprint(stderr, fqdnUsage)
	return 2
}

func defaultStateFile() string {
	if p := os.Getenv("WARD_FQDN_STATE"); p != "" {
		return p
	}
	return dnsproxy.DefaultStateFile
}

func fqdnCacheList(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward fqdn cache list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.String("state", os.Getenv("WARD_FQDN_STATE"), "read the FQDN state file wardd writes instead of asking the live agent")
	stateDir := fs.String("state-dir", "/var/run/ward", "wardd's state directory (the live agent)")
	endpoint := fs.String("endpoint", "", "only this endpoint ID")
	name := fs.String("name", "", "only this name")
	format := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	entries, err := fqdnEntries(*state, *stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "ward fqdn: %v\n", err)
		return 1
	}
	var ep uint64
	if *endpoint != "" {
		if ep, err = strconv.ParseUint(*endpoint, 10, 64); err != nil {
			fmt.Fprintf(stderr, "ward fqdn: --endpoint %q: not a number\n", *endpoint)
			return 2
		}
	}
	want := strings.ToLower(strings.TrimSuffix(*name, "."))
	type row struct {
		Endpoint   uint64    `json:"endpoint"`
		Source     string    `json:"source"`
		Name       string    `json:"name"`
		TTLLeft    int64     `json:"ttlLeft"` // seconds
		Expiration time.Time `json:"expiration"`
		IPs        []string  `json:"ips"`
	}
	// One row per endpoint, source and name, its IPs joined.
	var rows []*row
	idx := map[string]*row{}
	now := time.Now()
	for _, e := range entries {
		if *endpoint != "" && e.Endpoint != ep || want != "" && e.Name != want {
			continue
		}
		src := "lookup"
		if e.Zombie {
			src = "connection"
		}
		k := fmt.Sprint(e.Endpoint, src, e.Name)
		r := idx[k]
		if r == nil {
			r = &row{Endpoint: e.Endpoint, Source: src, Name: e.Name, Expiration: e.Expires}
			idx[k] = r
			rows = append(rows, r)
		}
		if e.Expires.After(r.Expiration) {
			r.Expiration = e.Expires
		}
		r.IPs = append(r.IPs, e.IP.String())
	}
	for _, r := range rows {
		if left := r.Expiration.Sub(now); left > 0 {
			r.TTLLeft = int64(left.Round(time.Second) / time.Second)
		}
	}
	if *format == "json" {
		if rows == nil {
			rows = []*row{}
		}
		return writeJSON(stdout, stderr, rows)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tSOURCE\tFQDN\tTTL\tEXPIRATION\tIPS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", r.Endpoint, r.Source, r.Name, r.TTLLeft,
			r.Expiration.UTC().Format(time.RFC3339), strings.Join(r.IPs, ","))
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "ward fqdn: %v\n", err)
		return 1
	}
	return 0
}

// fqdnEntries reads the DNS proxy's cache from the state file when one is
// named, else from the live agent.
func fqdnEntries(stateFile, stateDir string) ([]dnsproxy.CacheEntry, error) {
	if stateFile != "" {
		st, err := dnsproxy.ReadState(stateFile)
		if err != nil {
			return nil, err
		}
		return st.Entries, nil
	}
	var live []api.FQDNEntry
	if err := agentGet(stateDir, api.FQDNCachePath, &live); err != nil {
		return nil, err
	}
	out := make([]dnsproxy.CacheEntry, 0, len(live))
	for _, e := range live {
		ip, err := netip.ParseAddr(e.IP)
		if err != nil {
			return nil, fmt.Errorf("bad answer from wardd: %w", err)
		}
		out = append(out, dnsproxy.CacheEntry{Endpoint: e.Endpoint, Name: e.Name, IP: ip, Expires: e.Expires, Zombie: e.Zombie})
	}
	return out, nil
}

func fqdnNames(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward fqdn names", flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.String("state", defaultStateFile(), "FQDN state file written by wardd")
	format := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	st, err := dnsproxy.ReadState(*state)
	if err != nil {
		fmt.Fprintf(stderr, "ward fqdn: %v\n", err)
		return 1
	}
	type view struct {
		Selector   string   `json:"selector"`
		Names      []string `json:"names"`
		IPs        []string `json:"ips"`
		Identities []uint32 `json:"identities"`
	}
	ipIdentity := map[string]dnsproxy.IPState{}
	for _, s := range st.IPs {
		ipIdentity[s.IP.String()] = s
	}
	views := []*view{}
	for _, sel := range st.Selectors {
		v := &view{Selector: sel, Names: []string{}, IPs: []string{}, Identities: []uint32{}}
		for _, e := range st.Entries {
			if !dnsproxy.SelectorMatches(sel, e.Name) {
				continue
			}
			if !slices.Contains(v.Names, e.Name) {
				v.Names = append(v.Names, e.Name)
			}
			ip := e.IP.String()
			if !slices.Contains(v.IPs, ip) {
				v.IPs = append(v.IPs, ip)
			}
			if s, ok := ipIdentity[ip]; ok && !slices.Contains(v.Identities, s.Identity) {
				v.Identities = append(v.Identities, s.Identity)
			}
		}
		slices.Sort(v.Names)
		slices.Sort(v.Identities)
		views = append(views, v)
	}
	if *format == "json" {
		return writeJSON(stdout, stderr, views)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SELECTOR\tNAMES\tIPS\tIDENTITIES")
	for _, v := range views {
		ids := make([]string, len(v.Identities))
		for i, id := range v.Identities {
			ids[i] = strconv.FormatUint(uint64(id), 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Selector, orDash(v.Names), orDash(v.IPs), orDash(ids))
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "ward fqdn: %v\n", err)
		return 1
	}
	return 0
}

func orDash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func writeJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "ward fqdn: %v\n", err)
		return 1
	}
	return 0
}
