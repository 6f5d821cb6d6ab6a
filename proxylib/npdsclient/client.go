package npdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/xds/npds"
)

// Config configures a Client.
type Config struct {
	Socket  string // wardd's unix socket
	NodeID  string
	Compile Compiler
	Logger  proxylib.Logger // nil: silent
	// Backoff bounds the reconnect delay; defaults 100ms..5s.
	MinBackoff, MaxBackoff time.Duration
}

// Client subscribes to the policy resources and publishes States.
type Client struct {
	cfg   Config
	state atomic.Pointer[State]

	mu       sync.Mutex // guards the fields below; never held across I/O
	policies map[string]*npds.NetworkPolicy
	hosts    map[string]*npds.NetworkPolicyHosts
	updates  chan struct{} // closed and replaced on every publish
}

// New returns a client; Run starts it.
func New(cfg Config) *Client {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	c := &Client{
		cfg:      cfg,
		policies: map[string]*npds.NetworkPolicy{},
		hosts:    map[string]*npds.NetworkPolicyHosts{},
		updates:  make(chan struct{}),
	}
	c.state.Store(&State{byName: map[string]*Endpoint{}, byIP: nil})
	return c
}

// State returns the current policy view (never nil).
func (c *Client) State() *State { return c.state.Load() }

// Updated returns a channel closed at the next publish (tests, status).
func (c *Client) Updated() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.updates
}

func (c *Client) logf(level proxylib.LogLevel, format string, args ...any) {
	if c.cfg.Logger != nil {
		c.cfg.Logger.Log(level, fmt.Sprintf(format, args...))
	}
}

// Run keeps a stream to the agent until ctx is done, reconnecting with
// backoff. It returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	backoff := c.cfg.MinBackoff
	for {
		start := time.Now()
		err := c.stream(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.logf(proxylib.LogWarn, "ward: policy stream to %s ended (keeping the last policy): %v", c.cfg.Socket, err)
		if time.Since(start) > 10*time.Second {
			backoff = c.cfg.MinBackoff
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

func (c *Client) stream(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+c.cfg.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	node := &core.Node{Id: c.cfg.NodeID, Cluster: "ward-proxylib"}
	for _, t := range []string{npds.NetworkPolicyType, npds.NetworkPolicyHostsType} {
		// Wildcard subscription; on a reconnect, say what we hold so the
		// server sends only what changed.
		req := &discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: t, InitialResourceVersions: c.held(t)}
		if err := st.Send(req); err != nil {
			return fmt.Errorf("subscribe %s: %w", t, err)
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("server closed the stream")
			}
			return err
		}
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if err := c.apply(resp); err != nil {
			c.logf(proxylib.LogError, "ward: rejected policy update %s (keeping the previous policy): %v", resp.GetSystemVersionInfo(), err)
			ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		}
		if err := st.Send(ack); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
	}
}

// held returns the versions of what the client holds of a type.
func (c *Client) held(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	switch typeURL {
	case npds.NetworkPolicyType:
		for n := range c.policies {
			out[n] = ""
		}
	case npds.NetworkPolicyHostsType:
		for n := range c.hosts {
			out[n] = ""
		}
	}
	return out
}

// apply decodes and compiles one delta response and publishes the new
// State; on error nothing changes.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	c.mu.Lock()
	cur := c.state.Load()
	policies, hosts := c.policies, c.hosts
	c.mu.Unlock()
	// Decode and compile outside the lock; only this goroutine writes.
	s := *cur
	switch resp.GetTypeUrl() {
	case npds.NetworkPolicyType:
		next, err := merge(policies, resp, func() *npds.NetworkPolicy { return &npds.NetworkPolicy{} })
		if err != nil {
			return err
		}
		if s.byName, s.byIP, err = compilePolicies(next, c.cfg.Compile); err != nil {
			return err
		}
		s.PolicyVersion = resp.GetSystemVersionInfo()
		c.publish(&s, func() { c.policies = next })
	case npds.NetworkPolicyHostsType:
		next, err := merge(hosts, resp, func() *npds.NetworkPolicyHosts { return &npds.NetworkPolicyHosts{} })
		if err != nil {
			return err
		}
		if s.hostsExact, s.hostsPrefix, err = compileHosts(next); err != nil {
			return err
		}
		s.HostsVersion = resp.GetSystemVersionInfo()
		c.publish(&s, func() { c.hosts = next })
	default:
		return fmt.Errorf("unexpected type %s", resp.GetTypeUrl())
	}
	return nil
}

// merge applies a delta response to the resources held: removals, then
// added or updated resources decoded with newT.
func merge[T proto.Message](held map[string]T, resp *discovery.DeltaDiscoveryResponse, newT func() T) (map[string]T, error) {
	next := make(map[string]T, len(held)+len(resp.GetResources()))
	maps.Copy(next, held)
	for _, n := range resp.GetRemovedResources() {
		delete(next, n)
	}
	for _, r := range resp.GetResources() {
		m := newT()
		if err := r.GetResource().UnmarshalTo(m); err != nil {
			return nil, fmt.Errorf("resource %s: %w", r.GetName(), err)
		}
		next[r.GetName()] = m
	}
	return next, nil
}

func (c *Client) publish(s *State, commit func()) {
	c.mu.Lock()
	commit()
	c.state.Store(s)
	close(c.updates)
	c.updates = make(chan struct{})
	c.mu.Unlock()
	c.logf(proxylib.LogInfo, "ward: policy %s / hosts %s in force (%d endpoints)", s.PolicyVersion, s.HostsVersion, len(s.byName))
}

// Clients shares one Client per (socket, node) in a process: every filter
// configuration naming the same agent uses the same subscription. It is a
// registry in the sense of STYLE.md: started clients live as long as the
// process (a Go module cannot be unloaded from Envoy anyway).
type Clients struct {
	mu sync.Mutex
	m  map[[2]string]*Client
}

// Get returns the running client for socket and node, starting it on
// first use.
func (r *Clients) Get(socket, node string, compile Compiler, log proxylib.Logger) *Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[[2]string]*Client{}
	}
	k := [2]string{socket, node}
	if c, ok := r.m[k]; ok {
		return c
	}
	c := New(Config{Socket: socket, NodeID: node, Compile: compile, Logger: log})
	r.m[k] = c
	go c.Run(context.Background()) //nolint:errcheck // lives as long as the process
	return c
}

// Apply compiles and publishes a complete set of policy resources without
// a server, as an update from the agent would (tests, benchmarks, static
// configurations). On error nothing changes.
func (c *Client) Apply(_ context.Context, ps []*npds.NetworkPolicy, hs []*npds.NetworkPolicyHosts) error {
	pm := make(map[string]*npds.NetworkPolicy, len(ps))
	for _, p := range ps {
		pm[p.GetName()] = p
	}
	hm := make(map[string]*npds.NetworkPolicyHosts, len(hs))
	for _, h := range hs {
		hm[h.GetName()] = h
	}
	byName, byIP, err := compilePolicies(pm, c.cfg.Compile)
	if err != nil {
		return err
	}
	exact, prefixes, err := compileHosts(hm)
	if err != nil {
		return err
	}
	s := &State{PolicyVersion: "static", HostsVersion: "static", byName: byName, byIP: byIP, hostsExact: exact, hostsPrefix: prefixes}
	c.publish(s, func() { c.policies, c.hosts = pm, hm })
	return nil
}
