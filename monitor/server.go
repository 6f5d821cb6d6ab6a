package monitor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardproxy/ward/flow"
)

// Version is what ServerStatus reports.
const Version = "ward"

// HealthService is the name the Hubble server's gRPC health service
// reports the Observer under (Cilium's pkg/hubble/api/v1
// ObserverServiceName), which `hubble status` checks.
const HealthService = "hubble.server.Observer"

// Observer implements Hubble's Observer service over a Hub.
type Observer struct {
	observerpb.UnimplementedObserverServer
	hub *Hub
}

// NewObserver returns the Observer service of h.
func NewObserver(h *Hub) *Observer { return &Observer{hub: h} }

// ServerStatus implements observerpb.ObserverServer.
func (o *Observer) ServerStatus(context.Context, *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	lo, hi, _ := o.hub.window()
	up := time.Since(o.hub.start)
	rate := 0.0
	if s := up.Seconds(); s > 0 {
		rate = float64(hi) / s
	}
	return &observerpb.ServerStatusResponse{
		NumFlows: hi - lo, MaxFlows: uint64(o.hub.Capacity()), SeenFlows: hi, UptimeNs: uint64(up),
		NumConnectedNodes: wrapperspb.UInt32(1), NumUnavailableNodes: wrapperspb.UInt32(0),
		Version: Version, FlowsRate: rate,
	}, nil
}

// GetNodes implements observerpb.ObserverServer: this node.
func (o *Observer) GetNodes(context.Context, *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	lo, hi, _ := o.hub.window()
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{{
		Name: o.hub.node, Version: Version, State: 1, // relay.NodeState_NODE_CONNECTED
		UptimeNs: uint64(time.Since(o.hub.start)), NumFlows: hi - lo, MaxFlows: uint64(o.hub.Capacity()), SeenFlows: hi,
	}}}, nil
}

// GetFlows implements observerpb.ObserverServer: the last (or first)
// Number flows that match, then, with Follow, every new one until the
// client leaves. Without Number and Follow, every flow the ring holds.
func (o *Observer) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	fs, err := compileFilters(req.GetWhitelist(), req.GetBlacklist())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	var since, until time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		until = req.GetUntil().AsTime()
	}
	match := func(f *flowpb.Flow) bool {
		t := f.GetTime().AsTime()
		if !since.IsZero() && t.Before(since) {
			return false
		}
		if !until.IsZero() && t.After(until) {
			return false
		}
		return fs.match(f)
	}
	send := func(f *flowpb.Flow) error {
		return stream.Send(&observerpb.GetFlowsResponse{
			ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f}, NodeName: o.hub.node, Time: f.GetTime(),
		})
	}
	lo, hi, next := o.hub.window()
	n := req.GetNumber()
	var hist []*flowpb.Flow
	switch {
	case req.GetFirst():
		for s := lo; s < hi && (n == 0 || uint64(len(hist)) < n); s++ {
			if f := o.hub.at(s); f != nil && match(f) {
				hist = append(hist, f)
			}
		}
	case n > 0 || !req.GetFollow():
		for s := hi; s > lo && (n == 0 || uint64(len(hist)) < n); s-- {
			if f := o.hub.at(s - 1); f != nil && match(f) {
				hist = append(hist, f)
			}
		}
		for i, j := 0, len(hist)-1; i < j; i, j = i+1, j-1 {
			hist[i], hist[j] = hist[j], hist[i]
		}
	}
	for _, f := range hist {
		if err := send(f); err != nil {
			return err
		}
	}
	if !req.GetFollow() {
		return nil
	}
	ctx := stream.Context()
	cursor := hi
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-next:
		}
		var lo, hi uint64
		lo, hi, next = o.hub.window()
		if cursor < lo {
			// The ring overwrote flows this follower had not read.
			lost := &observerpb.GetFlowsResponse{NodeName: o.hub.node, Time: timestamppb.Now(),
				ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &observerpb.LostEvent{
					Source: observerpb.LostEventSource_HUBBLE_RING_BUFFER, NumEventsLost: lo - cursor}}}
			if err := stream.Send(lost); err != nil {
				return err
			}
			cursor = lo
		}
		for ; cursor < hi; cursor++ {
			f := o.hub.at(cursor)
			if f == nil || !match(f) {
				continue
			}
			if !until.IsZero() && f.GetTime().AsTime().After(until) {
				return nil
			}
			if err := send(f); err != nil {
				return err
			}
		}
	}
}

// listenUnix listens on a unix socket at path (a stale one removed),
// mode 0660.
func listenUnix(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// Server serves the Hub: the Observer gRPC service on HubbleSocket and
// the flow socket that other processes (libward.so) ship batches to.
type Server struct {
	Hub          *Hub
	HubbleSocket string // "" : no Observer service
	FlowSocket   string // "" : no flow socket

	hubble, flows net.Listener
}

// Listen opens the sockets (Run serves them).
func (s *Server) Listen() error {
	var err error
	if s.HubbleSocket != "" {
		if s.hubble, err = listenUnix(s.HubbleSocket); err != nil {
			return fmt.Errorf("observer: %w", err)
		}
	}
	if s.FlowSocket != "" {
		if s.flows, err = listenUnix(s.FlowSocket); err != nil {
			if s.hubble != nil {
				s.hubble.Close()
			}
			return fmt.Errorf("flow socket: %w", err)
		}
	}
	return nil
}

// Close closes the sockets Listen opened (when Run is not called).
func (s *Server) Close() {
	for _, l := range []net.Listener{s.hubble, s.flows} {
		if l != nil {
			l.Close()
		}
	}
}

// Run serves until ctx is done, then closes the sockets and waits for
// every connection's goroutine.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	var gs *grpc.Server
	if s.hubble != nil {
		gs = grpc.NewServer()
		observerpb.RegisterObserverServer(gs, NewObserver(s.Hub))
		// `hubble status` checks the standard health service first.
		hs := health.NewServer()
		hs.SetServingStatus(HealthService, healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(gs, hs)
		wg.Go(func() {
			if err := gs.Serve(s.hubble); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("observer: serve: %w", err)
			}
		})
	}
	conns := map[net.Conn]struct{}{}
	var connsMu sync.Mutex
	if s.flows != nil {
		wg.Go(func() {
			for {
				c, err := s.flows.Accept()
				if err != nil {
					if ctx.Err() == nil {
						errc <- fmt.Errorf("flow socket: accept: %w", err)
					}
					return
				}
				connsMu.Lock()
				conns[c] = struct{}{}
				connsMu.Unlock()
				wg.Go(func() {
					s.receive(c)
					connsMu.Lock()
					delete(conns, c)
					connsMu.Unlock()
				})
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	if gs != nil {
		gs.Stop()
	}
	if s.flows != nil {
		s.flows.Close()
		connsMu.Lock()
		for c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		os.Remove(s.FlowSocket)
	}
	if s.HubbleSocket != "" {
		os.Remove(s.HubbleSocket)
	}
	wg.Wait()
	return err
}

// receive reads one producer's batches until it leaves; a line that does
// not decode is skipped (a batch cut by the producer's write deadline).
func (s *Server) receive(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A batch larger than the buffer: read the rest of it.
			buf := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				buf = append(buf, line...)
			}
			line = buf
		}
		if err != nil {
			return
		}
		var b flow.Batch
		if json.Unmarshal(line, &b) != nil {
			continue
		}
		s.Hub.AddLost(b.Dropped)
		for _, rec := range b.Records {
			s.Hub.Emit(rec)
		}
	}
}
