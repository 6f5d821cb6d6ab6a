package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
)

// runMonitor prints wardd's flows from its Observer API (hubble.sock in
// the state directory; the same service `hubble observe` uses): the last N,
// then new ones with --follow.
func runMonitor(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward monitor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "/var/run/ward", "wardd's state directory")
	last := fs.Uint64("last", 20, "print the last N flows (0: every flow kept)")
	follow := fs.Bool("follow", false, "keep printing new flows")
	verdict := fs.String("verdict", "", "only flows with this verdict: FORWARDED, DROPPED, AUDIT or ERROR")
	output := fs.String("o", "compact", "output: compact or json (one Hubble flow per line)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output != "compact" && *output != "json" {
		fmt.Fprintf(stderr, "ward monitor: -o %q: want compact or json\n", *output)
		return 2
	}
	req := &observerpb.GetFlowsRequest{Number: *last, Follow: *follow}
	if *verdict != "" {
		v, ok := flowpb.Verdict_value[strings.ToUpper(*verdict)]
		if !ok {
			fmt.Fprintf(stderr, "ward monitor: -verdict %q: want FORWARDED, DROPPED, AUDIT or ERROR\n", *verdict)
			return 2
		}
		req.Whitelist = []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict(v)}}}
	}
	sock := filepath.Join(*stateDir, "hubble.sock")
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "ward monitor: %v\n", err)
		return 1
	}
	defer cc.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	st, err := observerpb.NewObserverClient(cc).GetFlows(ctx, req)
	if err != nil {
		fmt.Fprintf(stderr, "ward monitor: wardd is not answering on %s: %v\n", sock, err)
		return 1
	}
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return 0
		}
		if err != nil {
			fmt.Fprintf(stderr, "ward monitor: %v (is wardd running with --state-dir %s?)\n", err, *stateDir)
			return 1
		}
		f := r.GetFlow()
		if f == nil {
			if l := r.GetLostEvents(); l != nil {
				fmt.Fprintf(stdout, "(%d flows lost: the ring overwrote them)\n", l.GetNumEventsLost())
			}
			continue
		}
		if *output == "json" {
			b, err := protojson.Marshal(f)
			if err != nil {
				fmt.Fprintf(stderr, "ward monitor: %v\n", err)
				return 1
			}
			fmt.Fprintf(stdout, "%s\n", b)
			continue
		}
		fmt.Fprintln(stdout, compactFlow(f))
	}
}

// compactFlow is one line per flow, as hubble's compact output.
func compactFlow(f *flowpb.Flow) string {
	side := func(ep *flowpb.Endpoint, ip string, port uint32) string {
		s := ip
		if ep.GetPodName() != "" {
			s = ep.GetNamespace() + "/" + ep.GetPodName()
		}
		if port != 0 {
			s += fmt.Sprintf(":%d", port)
		}
		return fmt.Sprintf("%s (ID:%d)", s, ep.GetIdentity())
	}
	l4 := f.GetL4()
	sp := max(l4.GetTCP().GetSourcePort(), l4.GetUDP().GetSourcePort())
	dp := max(l4.GetTCP().GetDestinationPort(), l4.GetUDP().GetDestinationPort())
	kind := strings.ToLower(f.GetType().String())
	switch {
	case f.GetL7().GetHttp() != nil:
		kind = "http-request"
	case f.GetL7().GetDns() != nil:
		kind = "dns-" + strings.ToLower(f.GetL7().GetType().String())
	case f.GetL7().GetKafka() != nil: //lint:ignore SA1019 ward fills l7.kafka (monitor/convert.go)
		kind = "kafka-request"
	}
	//lint:ignore SA1019 ward fills Summary (monitor/convert.go)
	summary := f.GetSummary()
	return fmt.Sprintf("%s: %s -> %s %s %s %s (%s)", f.GetTime().AsTime().Format("Jan _2 15:04:05.000"),
		side(f.GetSource(), f.GetIP().GetSource(), sp), side(f.GetDestination(), f.GetIP().GetDestination(), dp),
		strings.ToLower(f.GetTrafficDirection().String()), kind, f.GetVerdict(), summary)
}
