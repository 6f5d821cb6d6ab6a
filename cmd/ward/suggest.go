package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wardproxy/ward/policy/suggest"
)

const suggestUsage = `usage:
  ward policy suggest [--state-dir DIR] [--since DURATION|TIME] [--last N] [--pod NAMESPACE/POD]
  ward policy suggest --file FLOWS.json [--pod NAMESPACE/POD]

Prints the CiliumNetworkPolicies (YAML) that would allow the flows wardd
recorded with verdict AUDIT, or DROPPED by policy (at L3/L4 or L7): one
policy per receiving (ingress) or sending (egress) endpoint, selecting it
by its identity labels, each peer by its identity labels (or entity, or
CIDR), with the ports and, for verdicts taken at L7, the HTTP method and
path, DNS names or Kafka API keys and topics seen. For the node itself (the
host firewall's verdicts) it is a CiliumClusterwideNetworkPolicy whose
nodeSelector is the node's labels (L3/L4 only, as host policies are).
The flows come from wardd's Observer API (hubble.sock in --state-dir), or
from --file, the output of ` + "`hubble observe -o json`" + ` ("-": standard input).
Review the suggestion before saving it into the policy directory.
`

func policySuggest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward policy suggest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "/var/run/ward", "wardd's state directory")
	file := fs.String("file", "", "read `hubble observe -o json` output from this file (- for standard input) instead of wardd")
	since := fs.String("since", "", "only flows since this duration ago (5m) or time (RFC 3339)")
	last := fs.Uint64("last", 0, "only the last N matching flows (0: every flow wardd keeps)")
	pod := fs.String("pod", "", "only the policy of this endpoint (NAMESPACE/POD): the flows it received (ingress) or sent (egress)")
	fs.Usage = func() { fmt.Fprint(stderr, suggestUsage) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprint(stderr, suggestUsage)
		return 2
	}
	var flows []*flowpb.Flow
	var err error
	if *file != "" {
		flows, err = readFlowsFile(*file)
	} else {
		var from time.Time
		if from, err = parseSince(*since, time.Now()); err != nil {
			fmt.Fprintf(stderr, "ward policy suggest: --since: %v\n", err)
			return 2
		}
		flows, err = liveVerdicts(*stateDir, from, *last)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ward policy suggest: %v\n", err)
		return 1
	}
	if *pod != "" {
		flows = suggest.ForPod(flows, *pod)
	}
	ps, err := suggest.Suggest(flows)
	if err != nil {
		fmt.Fprintf(stderr, "ward policy suggest: %v\n", err)
		return 1
	}
	if len(ps) == 0 {
		fmt.Fprintf(stderr, "ward policy suggest: %v (read %d flows)\n", suggest.ErrNothing, len(flows))
		return 1
	}
	out, err := suggest.YAML(ps)
	if err != nil {
		fmt.Fprintf(stderr, "ward policy suggest: %v\n", err)
		return 1
	}
	if _, err := stdout.Write(out); err != nil {
		fmt.Fprintf(stderr, "ward policy suggest: %v\n", err)
		return 1
	}
	return 0
}

func readFlowsFile(path string) ([]*flowpb.Flow, error) {
	if path == "-" {
		return suggest.ReadHubbleJSON(os.Stdin)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	flows, err := suggest.ReadHubbleJSON(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return flows, nil
}

// parseSince reads --since: empty (no bound), a duration before now, or
// an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want a duration (5m) or an RFC 3339 time", s)
	}
	return t, nil
}

// liveVerdicts asks wardd's Observer API for the AUDIT and DROPPED flows
// it keeps (since from, the last n when n > 0).
func liveVerdicts(stateDir string, from time.Time, n uint64) ([]*flowpb.Flow, error) {
	sock := filepath.Join(stateDir, "hubble.sock")
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	req := &observerpb.GetFlowsRequest{Number: n,
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_AUDIT, flowpb.Verdict_DROPPED}}}}
	if !from.IsZero() {
		req.Since = timestamppb.New(from)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := observerpb.NewObserverClient(cc).GetFlows(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("wardd is not answering on %s: %w (is wardd running with --state-dir %s?)", sock, err, stateDir)
	}
	var out []*flowpb.Flow
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("flows from %s: %w", sock, err)
		}
		if f := r.GetFlow(); f != nil {
			out = append(out, f)
		}
	}
}
