package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wardproxy/ward/agent/api"
)

const endpointConfigUsage = `usage:
  ward endpoint config ID OPTION=VALUE... [--state-dir DIR] [-o table|json]

Changes a live endpoint's options, as "cilium endpoint config" does:
  audit=on|off              policy audit mode (also PolicyAuditMode=Enabled|Disabled):
                            what the endpoint's policy would drop passes and is
                            recorded with verdict AUDIT (hubble observe --verdict
                            AUDIT), at L3/L4 and L7. It overrides the node's
                            policyAuditMode for this endpoint as long as it exists,
                            across wardd restarts (saved in the state directory).
`

// endpointConfig is `ward endpoint config`.
func endpointConfig(args []string, stdout, stderr io.Writer) int {
	f := newAgentFlags("ward endpoint config", stderr)
	pos, ok := f.parse(args)
	if !ok {
		return 2
	}
	if len(pos) < 2 {
		fmt.Fprint(stderr, endpointConfigUsage)
		return 2
	}
	id, err := strconv.ParseUint(pos[0], 10, 64)
	if err != nil {
		fmt.Fprintf(stderr, "ward endpoint config: endpoint id %q: want a number\n", pos[0])
		return 2
	}
	c, err := parseEndpointOptions(pos[1:])
	if err != nil {
		fmt.Fprintf(stderr, "ward endpoint config: %v\n%s", err, endpointConfigUsage)
		return 2
	}
	var ep api.Endpoint
	if err := agentPost(*f.stateDir, strings.Replace(api.EndpointConfigPath, "{id}", strconv.FormatUint(id, 10), 1), c, &ep); err != nil {
		fmt.Fprintf(stderr, "ward endpoint config: %v\n", err)
		return 1
	}
	if f.json() {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(ep); err != nil {
			fmt.Fprintf(stderr, "ward endpoint config: %v\n", err)
			return 1
		}
		return 0
	}
	audit := "off"
	if ep.Audit {
		audit = "on"
	}
	fmt.Fprintf(stdout, "endpoint %d (%s): audit=%s\n", ep.ID, ep.Name, audit)
	return 0
}

// parseEndpointOptions reads OPTION=VALUE arguments.
func parseEndpointOptions(opts []string) (api.EndpointConfig, error) {
	var c api.EndpointConfig
	for _, o := range opts {
		k, v, ok := strings.Cut(o, "=")
		if !ok {
			return c, fmt.Errorf("option %q: want OPTION=VALUE", o)
		}
		switch strings.ToLower(k) {
		case "audit", "policyauditmode":
			var on bool
			switch strings.ToLower(v) {
			case "on", "true", "enabled", "enable":
				on = true
			case "off", "false", "disabled", "disable":
			default:
				return c, fmt.Errorf("option %s=%q: want on or off", k, v)
			}
			c.Audit = &on
		default:
			return c, fmt.Errorf("unknown option %q (want audit)", k)
		}
	}
	return c, nil
}

// agentPost POSTs body as JSON to path on wardd's status socket in
// stateDir and decodes the JSON answer into v.
func agentPost(stateDir, path string, body, v any) error {
	sock := filepath.Join(stateDir, api.Socket)
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	resp, err := cl.Post("http://wardd"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("wardd is not answering on %s: %w (is wardd running with --state-dir %s?)", sock, err, stateDir)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s", errNotFound, strings.TrimSpace(string(out)))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("wardd answered %s: %s", resp.Status, strings.TrimSpace(string(out)))
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("bad answer from wardd: %w", err)
	}
	return nil
}
