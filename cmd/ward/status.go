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
	"time"
)

// runStatus asks wardd (over its status socket) what it serves and what
// Envoy acknowledged, and prints it.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "/var/run/ward", "wardd's state directory")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	sock := filepath.Join(*stateDir, "wardd.sock")
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := cl.Get("http://wardd/status")
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
	var st struct {
		Streams int64             `json:"xdsStreams"`
		Acked   map[string]string `json:"acked"`
		NACKs   []struct {
			TypeURL, Version, Message string
		} `json:"nacks"`
		Envoy *struct {
			PID, Starts int
			LastError   string
		} `json:"envoy"`
	}
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
	return 0
}
