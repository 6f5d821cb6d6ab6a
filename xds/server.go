// Package xds is ward's xDS server (go-control-plane) on a unix socket. It
// serves Envoy its listeners, clusters and secrets over ADS, and serves the
// Go filters inside Envoy ward's policy resources (xds/npds): NetworkPolicy
// per endpoint and NetworkPolicyHosts per identity.
//
// Listeners, clusters and secrets live in one SnapshotCache snapshot per
// node; the policy resources live in their own LinearCaches, so a policy
// change sends only policy resources and never touches a listener (an LDS
// update would drain connections), and only the resources that changed.
// Every update is a new version; the last NACK per type is kept for `ward
// status`, and for the policy types what the proxy applied or rejected,
// resource by resource (Resources; resources.go says how delivery stays
// lossless when the proxy rejects some).
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/wardproxy/ward/xds/npds"
)

// ErrSocketInUse is returned by Listen when another process serves the
// socket already (for example, wardd started twice).
var ErrSocketInUse = errors.New("socket in use")

// Config configures a Server. The zero value is not usable: Socket is
// required.
type Config struct {
	// Socket is the unix socket path to serve on.
	Socket string
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// NACK records a rejected update.
type NACK struct {
	TypeURL string
	Node    string
	Version string // the version the client still runs
	Nonce   string
	Message string
	Time    time.Time
}

// Server is an xDS server. Its methods are safe for concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	snap     cache.SnapshotCache
	policies *resyncCache
	hosts    *resyncCache
	mux      *cache.MuxCache

	mu      sync.Mutex
	nacks   map[string]NACK // by type URL
	acked   map[string]string
	streams atomic.Int64
	// deltaStreams are the in-Envoy policy clients' (Envoy's own ADS
	// stream is state-of-the-world).
	deltaStreams atomic.Int64
	version      atomic.Uint64
	lis          net.Listener
	grpcSrv      *grpc.Server
	sent         map[streamNonce]sentResponse // delta responses awaiting their ACK/NACK
	proxy        map[string]*proxyState       // by type URL: what the policy client holds
	resync       map[*discovery.DeltaDiscoveryRequest]uint64
}

// New returns a server; call Listen then Serve (or Run).
func New(cfg Config) (*Server, error) {
	if cfg.Socket == "" {
		return nil, errors.New("xds: Config.Socket is required")
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:      cfg,
		log:      lg,
		snap:     cache.NewSnapshotCache(true, cache.IDHash{}, nil),
		policies: newResyncCache(npds.NetworkPolicyType, "p"),
		hosts:    newResyncCache(npds.NetworkPolicyHostsType, "h"),
		nacks:    map[string]NACK{},
		acked:    map[string]string{},
		sent:     map[streamNonce]sentResponse{},
		proxy:    map[string]*proxyState{npds.NetworkPolicyType: newProxyState(), npds.NetworkPolicyHostsType: newProxyState()},
		resync:   map[*discovery.DeltaDiscoveryRequest]uint64{},
	}
	s.policies.pending, s.hosts.pending = s.takeResync, s.takeResync
	s.mux = &cache.MuxCache{
		Classify: func(r *cache.Request) string { return classify(r.GetTypeUrl()) },
		ClassifyDelta: func(r *cache.DeltaRequest) string {
			return classify(r.GetTypeUrl())
		},
		Caches: map[string]cache.Cache{"envoy": s.snap, "policy": s.policies, "hosts": s.hosts},
	}
	return s, nil
}

func classify(typeURL string) string {
	switch typeURL {
	case npds.NetworkPolicyType:
		return "policy"
	case npds.NetworkPolicyHostsType:
		return "hosts"
	}
	return "envoy"
}

// Listen binds the unix socket. A stale socket file (nobody serving) is
// replaced; a live one is an ErrSocketInUse error.
func (s *Server) Listen() error {
	path := s.cfg.Socket
	if _, err := os.Stat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("xds: listen %s: %w: another process (another wardd?) serves it; stop it or use another state directory", path, ErrSocketInUse)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("xds: probe existing socket %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("xds: remove stale socket %s: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("xds: listen %s: %w", path, err)
	}
	// Envoy (maybe another user) must reach it; the directory guards it.
	if err := os.Chmod(path, 0o660); err != nil {
		lis.Close()
		return fmt.Errorf("xds: chmod %s: %w", path, err)
	}
	s.mu.Lock()
	s.lis = lis
	s.mu.Unlock()
	return nil
}

// Close releases the socket of a server that Listened but will not Run.
func (s *Server) Close() error {
	s.mu.Lock()
	lis := s.lis
	s.lis = nil
	s.mu.Unlock()
	if lis == nil {
		return nil
	}
	err := lis.Close()
	os.Remove(s.cfg.Socket)
	return err
}

// Run serves until ctx is done, then stops the gRPC server and removes the
// socket. Listen must have succeeded.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	lis := s.lis
	s.mu.Unlock()
	if lis == nil {
		return errors.New("xds: Run before Listen")
	}
	cb := serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			s.streams.Add(1)
			return nil
		},
		StreamClosedFunc: func(int64, *core.Node) { s.streams.Add(-1) },
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			s.observe(r)
			return nil
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			s.streams.Add(1)
			s.deltaStreams.Add(1)
			return nil
		},
		DeltaStreamClosedFunc: func(int64, *core.Node) { s.streams.Add(-1); s.deltaStreams.Add(-1) },
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
			s.sentDelta(id, r)
		},
		StreamDeltaRequestFunc: func(id int64, r *discovery.DeltaDiscoveryRequest) error {
			s.observeDelta(id, r)
			return nil
		},
	}
	xs := serverv3.NewServer(ctx, s.mux, cb)
	g := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	discovery.RegisterAggregatedDiscoveryServiceServer(g, xs)
	s.mu.Lock()
	s.grpcSrv = g
	s.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case <-ctx.Done():
		g.Stop()
		<-errc
		os.Remove(s.cfg.Socket)
		return nil
	case err := <-errc:
		os.Remove(s.cfg.Socket)
		return fmt.Errorf("xds: serve: %w", err)
	}
}

// observe records ACKs and NACKs.
func (s *Server) observe(r *discovery.DiscoveryRequest) {
	node := r.GetNode().GetId()
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := r.GetErrorDetail(); d != nil {
		n := NACK{TypeURL: r.GetTypeUrl(), Node: node, Version: r.GetVersionInfo(), Nonce: r.GetResponseNonce(), Message: d.GetMessage(), Time: time.Now()}
		s.nacks[r.GetTypeUrl()] = n
		s.log.Warn("xds update rejected", "type", r.GetTypeUrl(), "node", node, "version", r.GetVersionInfo(), "error", d.GetMessage())
		return
	}
	if r.GetResponseNonce() != "" {
		s.acked[r.GetTypeUrl()] = r.GetVersionInfo()
	}
}

// observeDelta records ACKs and NACKs of delta streams (the in-Envoy
// policy client): the version comes from the response the nonce names, the
// rejected resources from the NACK (see proxyState.observe).
func (s *Server) observeDelta(stream int64, r *discovery.DeltaDiscoveryRequest) {
	if r.GetResponseNonce() == "" {
		if iv := r.GetInitialResourceVersions(); iv != nil {
			// A (re)connecting proxy says what it holds; the server
			// sends only what differs, so this is what it has in force.
			s.mu.Lock()
			if ps := s.proxy[r.GetTypeUrl()]; ps != nil {
				ps.applied = maps.Clone(iv)
			}
			s.mu.Unlock()
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := streamNonce{stream, r.GetResponseNonce()}
	sent, ok := s.sent[k]
	delete(s.sent, k)
	if ps := s.proxy[r.GetTypeUrl()]; ps != nil && ok {
		rejected := rejectedResources(r.GetErrorDetail())
		ps.observe(sent, rejected)
		if len(rejected) > 0 {
			if len(s.resync) > 1024 { // requests whose watch was never created (closed streams)
				clear(s.resync)
			}
			s.resync[r] = sent.gen
		}
	}
	if d := r.GetErrorDetail(); d != nil {
		s.nacks[r.GetTypeUrl()] = NACK{TypeURL: r.GetTypeUrl(), Node: r.GetNode().GetId(), Version: sent.version, Nonce: r.GetResponseNonce(), Message: d.GetMessage(), Time: time.Now()}
		s.log.Warn("policy update rejected by proxy", "type", r.GetTypeUrl(), "version", sent.version, "error", d.GetMessage())
		return
	}
	if ok { // an ACK of a response we no longer know names no version
		s.acked[r.GetTypeUrl()] = sent.version
	}
}

// takeResync returns (and forgets) the generation of the response that r
// NACKs with named resources; the delta server hands the same request to
// the cache right after the request callback.
func (s *Server) takeResync(r *discovery.DeltaDiscoveryRequest) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gen, ok := s.resync[r]
	delete(s.resync, r)
	return gen, ok
}

// LastNACK returns the last rejection of a type, if any.
func (s *Server) LastNACK(typeURL string) (NACK, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nacks[typeURL]
	return n, ok
}

// Acked returns the last version a client acknowledged for a type. For the
// policy types that is the last version the proxy applied whole: while a
// resource stays rejected, later versions are NACKed (see Resources).
func (s *Server) Acked(typeURL string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked[typeURL]
}

// Streams returns the number of open xDS streams.
func (s *Server) Streams() int64 { return s.streams.Load() }

// PolicyStreams returns the number of open delta streams: the in-Envoy
// policy clients, whose ACKs Acked reports for the policy types.
func (s *Server) PolicyStreams() int64 { return s.deltaStreams.Load() }

// EnvoyResources are what Envoy itself consumes.
type EnvoyResources struct {
	Listeners []types.Resource
	Clusters  []types.Resource
	Secrets   []types.Resource
}

// SetEnvoyResources publishes a new snapshot of listeners, clusters and
// secrets for node. It returns the snapshot's version.
func (s *Server) SetEnvoyResources(ctx context.Context, node string, r EnvoyResources) (string, error) {
	v := strconv.FormatUint(s.version.Add(1), 10)
	snap, err := cache.NewSnapshot(v, map[resource.Type][]types.Resource{
		resource.ListenerType: r.Listeners,
		resource.ClusterType:  r.Clusters,
		resource.SecretType:   r.Secrets,
	})
	if err != nil {
		return "", fmt.Errorf("xds: snapshot: %w", err)
	}
	if err := snap.Consistent(); err != nil {
		return "", fmt.Errorf("xds: snapshot inconsistent: %w", err)
	}
	if err := s.snap.SetSnapshot(ctx, node, snap); err != nil {
		return "", fmt.Errorf("xds: set snapshot: %w", err)
	}
	return v, nil
}

// SetPolicies replaces the whole set of endpoint policies and returns the
// new version (what Acked reports once the proxy applied it). Only the
// resources that differ from the previous set are sent to the proxy; a set
// equal to the previous one changes nothing and returns the current
// version.
func (s *Server) SetPolicies(ps []*npds.NetworkPolicy) string {
	return setAll(s, s.policies, ps)
}

// SetHosts replaces the identity table and returns the new version, as
// SetPolicies.
func (s *Server) SetHosts(hs []*npds.NetworkPolicyHosts) string {
	return setAll(s, s.hosts, hs)
}
