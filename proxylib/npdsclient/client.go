package npdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

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

	mu      sync.Mutex    // guards updates; never held across I/O
	updates chan struct{} // closed and replaced on every publish

	// synced is closed once a response of each policy type was applied
	// (the agent's whole state at subscription): WaitSynced.
	synced     chan struct{}
	syncedOnce sync.Once
	gotTypes   atomic.Uint32 // bit 0: policies, bit 1: hosts

	// applyMu serializes appliers (the stream, Apply) and guards the
	// fields below; never held across I/O.
	applyMu  sync.Mutex
	held     map[string]map[string]string // type URL -> resource -> version in force
	rejected map[string]map[string]string // type URL -> resource -> why its last version was rejected
	hostsRes map[string]*hostsRes         // the compiled hosts resources in force
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
		updates:  make(chan struct{}),
		synced:   make(chan struct{}),
		held:     map[string]map[string]string{npds.NetworkPolicyType: {}, npds.NetworkPolicyHostsType: {}},
		rejected: map[string]map[string]string{npds.NetworkPolicyType: {}, npds.NetworkPolicyHostsType: {}},
		hostsRes: map[string]*hostsRes{},
	}
	c.state.Store(&State{byName: map[string]*Endpoint{}})
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

// Rejected returns the resources of a type whose last version was
// rejected, with the reason; each keeps its previous version (or is absent
// if it never compiled).
func (c *Client) Rejected(typeURL string) map[string]string {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	return maps.Clone(c.rejected[typeURL])
}

func (c *Client) logf(level proxylib.LogLevel, format string, args ...any) {
	if c.cfg.Logger != nil {
		c.cfg.Logger.Log(level, fmt.Sprintf(format, args...))
	}
}

// Run keeps a stream to the agent until ctx is done, reconnecting with
// backoff. It returns ctx's error. A panic inside a stream ends that
// stream only: the last State stays in force and Run reconnects.
func (c *Client) Run(ctx context.Context) error {
	backoff := c.cfg.MinBackoff
	for {
		start := time.Now()
		err := c.guardedStream(ctx)
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

// guardedStream is stream with a recover: this goroutine runs inside
// Envoy, where an unrecovered panic kills the proxy.
func (c *Client) guardedStream(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in the policy stream: %v\n%s", p, debug.Stack())
		}
	}()
	return c.stream(ctx)
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
		// Wildcard subscription; say which versions we hold so a server
		// (a restarted one too: versions are content hashes) sends only
		// what differs.
		req := &discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: t, InitialResourceVersions: c.heldVersions(t)}
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
		if err := c.apply(resp); err != nil && !knownType(resp.GetTypeUrl()) {
			c.logf(proxylib.LogError, "ward: policy update %s: %v", resp.GetSystemVersionInfo(), err)
		}
		ack.ErrorDetail = c.errorDetail(resp.GetTypeUrl())
		if err := st.Send(ack); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
	}
}

// heldVersions returns the versions of what the client holds of a type.
func (c *Client) heldVersions(typeURL string) map[string]string {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	return maps.Clone(c.held[typeURL])
}

// errorDetail is the NACK of a response of typeURL: nil when every
// resource of the type is in force, otherwise every resource currently
// rejected — not only those of the last response — each as a
// google.rpc.BadRequest field violation (field: the resource name).
func (c *Client) errorDetail(typeURL string) *statuspb.Status {
	rej, known := c.Rejected(typeURL), knownType(typeURL)
	if known && len(rej) == 0 {
		return nil
	}
	if !known {
		return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "unexpected type " + typeURL}
	}
	br := &errdetails.BadRequest{}
	msgs := make([]string, 0, len(rej))
	for _, n := range slices.Sorted(maps.Keys(rej)) {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: n, Description: rej[n]})
		msgs = append(msgs, rej[n])
	}
	st := &statuspb.Status{Code: int32(codes.InvalidArgument), Message: fmt.Sprintf("%d rejected: %s", len(rej), strings.Join(msgs, "; "))}
	if d, err := anypb.New(br); err == nil {
		st.Details = []*anypb.Any{d}
	}
	return st
}

func knownType(typeURL string) bool {
	return typeURL == npds.NetworkPolicyType || typeURL == npds.NetworkPolicyHostsType
}

// update is one resource of a delta, decoded (or not).
type update[T any] struct {
	name, version string
	msg           T
	err           error // decoding failed
}

func decode[T proto.Message](resp *discovery.DeltaDiscoveryResponse, newT func() T) []update[T] {
	out := make([]update[T], 0, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		m := newT()
		u := update[T]{name: r.GetName(), version: r.GetVersion(), msg: m}
		if err := r.GetResource().UnmarshalTo(m); err != nil {
			u.err = fmt.Errorf("resource %s: decode: %w", r.GetName(), err)
		}
		out = append(out, u)
	}
	return out
}

// apply applies one delta response resource by resource and publishes the
// new State. It returns the rejections of this response, joined.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	switch resp.GetTypeUrl() {
	case npds.NetworkPolicyType:
		defer c.gotType(1)
		return c.applyPolicies(resp.GetSystemVersionInfo(), resp.GetRemovedResources(),
			decode(resp, func() *npds.NetworkPolicy { return &npds.NetworkPolicy{} }))
	case npds.NetworkPolicyHostsType:
		defer c.gotType(2)
		return c.applyHosts(resp.GetSystemVersionInfo(), resp.GetRemovedResources(),
			decode(resp, func() *npds.NetworkPolicyHosts { return &npds.NetworkPolicyHosts{} }))
	}
	return fmt.Errorf("unexpected type %s", resp.GetTypeUrl())
}

// gotType records that a response of a policy type was applied (rejected
// resources included: what compiled is in force) and closes synced once
// both types were.
func (c *Client) gotType(bit uint32) {
	if c.gotTypes.Or(bit)|bit == 3 {
		c.syncedOnce.Do(func() { close(c.synced) })
	}
}

// WaitSynced waits, at most d, until the client applied the agent's state
// of both policy types once, and reports whether it did. A filter
// configuration waits for it (wait_first_policy_ms): Envoy's listener
// starts accepting only after it is created, so its first requests are
// decided by the agent's policy, not denied for want of one.
func (c *Client) WaitSynced(d time.Duration) bool {
	select {
	case <-c.synced:
		return true
	default:
	}
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.synced:
		return true
	case <-t.C:
		return false
	}
}

// applyPolicies compiles the updated endpoints (no lock: compiling may
// call into Envoy, to log), then folds them into a new State under
// applyMu, and logs after.
func (c *Client) applyPolicies(version string, removed []string, ups []update[*npds.NetworkPolicy]) error {
	changes, versions, rej := compileDelta(removed, ups, func(name string, m *npds.NetworkPolicy) (*Endpoint, error) {
		return compileEndpoint(name, m, c.cfg.Compile)
	})
	s := func() *State {
		c.applyMu.Lock()
		defer c.applyMu.Unlock()
		cur := c.state.Load()
		s := *cur
		s.byName, s.byIP = indexEndpoints(cur.byName, cur.byIP, changes, rej)
		s.PolicyVersion = version
		record(c, npds.NetworkPolicyType, changes, versions, rej)
		c.publish(&s)
		return &s
	}()
	c.logApplied(s, rej)
	return joinRejections(rej)
}

// compileDelta compiles the resources of a delta one by one: changes maps
// each name to its compiled form (nil: removed) with versions, rej the
// names that failed to decode or compile (each kept at its previous
// version by the caller).
func compileDelta[M any, R any](removed []string, ups []update[M], compile func(name string, m M) (*R, error)) (changes map[string]*R, versions map[string]string, rej map[string]error) {
	rej = map[string]error{}
	changes = make(map[string]*R, len(removed)+len(ups))
	for _, n := range removed {
		changes[n] = nil
	}
	versions = make(map[string]string, len(ups))
	for _, u := range ups {
		if u.err != nil {
			rej[u.name] = u.err
			continue
		}
		r, err := compile(u.name, u.msg)
		if err != nil {
			rej[u.name] = err
			continue
		}
		changes[u.name], versions[u.name] = r, u.version
	}
	return changes, versions, rej
}

// applyHosts is applyPolicies for the identity table.
func (c *Client) applyHosts(version string, removed []string, ups []update[*npds.NetworkPolicyHosts]) error {
	changes, versions, rej := compileDelta(removed, ups, compileHostsRes)
	s := func() *State {
		c.applyMu.Lock()
		defer c.applyMu.Unlock()
		cur := c.state.Load()
		s := *cur
		s.hosts = indexHosts(cur.hosts, c.hostsRes, changes, rej)
		s.HostsVersion = version
		for n, h := range changes {
			if h == nil {
				delete(c.hostsRes, n)
			} else {
				c.hostsRes[n] = h
			}
		}
		record(c, npds.NetworkPolicyHostsType, changes, versions, rej)
		c.publish(&s)
		return &s
	}()
	c.logApplied(s, rej)
	return joinRejections(rej)
}

// record notes what is in force after a delta: changes (nil: removed)
// applied at versions, rej rejected. applyMu must be held.
func record[T any](c *Client, typeURL string, changes map[string]*T, versions map[string]string, rej map[string]error) {
	held, rejected := c.held[typeURL], c.rejected[typeURL]
	for n, v := range changes {
		if v == nil {
			delete(held, n)
		} else {
			held[n] = versions[n]
		}
		delete(rejected, n)
	}
	for n, err := range rej {
		rejected[n] = err.Error()
	}
}

func (c *Client) logApplied(s *State, rej map[string]error) {
	for _, n := range slices.Sorted(maps.Keys(rej)) {
		c.logf(proxylib.LogError, "ward: rejected policy resource %s (it keeps its previous version): %v", n, rej[n])
	}
	c.logf(proxylib.LogInfo, "ward: policy %s / hosts %s in force (%d endpoints)", s.PolicyVersion, s.HostsVersion, len(s.byName))
}

func joinRejections(rej map[string]error) error {
	errs := make([]error, 0, len(rej))
	for _, n := range slices.Sorted(maps.Keys(rej)) {
		errs = append(errs, rej[n])
	}
	return errors.Join(errs...)
}

// publish stores s and wakes Updated's waiters; applyMu must be held
// (so States are published in the order they were built).
func (c *Client) publish(s *State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Store(s)
	close(c.updates)
	c.updates = make(chan struct{})
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
	go c.runForever()
	return c
}

// runForever runs the client for the life of the process (inside Envoy).
// Run recovers panics of each stream; this recover is the last line: a
// panic outside a stream ends the subscription, logged, and the last
// State stays in force — it does not take Envoy down.
func (c *Client) runForever() {
	defer func() {
		if p := recover(); p != nil {
			c.logRecovered(fmt.Sprintf("ward: policy subscription stopped by a panic (keeping the last policy): %v\n%s", p, debug.Stack()))
		}
	}()
	c.Run(context.Background()) //nolint:errcheck // lives as long as the process
}

// logRecovered logs from a deferred recover, where a second panic (from
// the logger itself) must not escape either.
func (c *Client) logRecovered(msg string) {
	defer func() { _ = recover() }()
	c.logf(proxylib.LogCritical, "%s", msg)
}

// Apply compiles and publishes a complete set of policy resources without
// a server, as an update from the agent would (tests, benchmarks, static
// configurations): what is held and not in the sets is removed. Rejected
// resources keep their previous version; the error joins their reasons.
func (c *Client) Apply(_ context.Context, ps []*npds.NetworkPolicy, hs []*npds.NetworkPolicyHosts) error {
	pu := make([]update[*npds.NetworkPolicy], 0, len(ps))
	for _, p := range ps {
		pu = append(pu, update[*npds.NetworkPolicy]{name: p.GetName(), version: "static", msg: p})
	}
	hu := make([]update[*npds.NetworkPolicyHosts], 0, len(hs))
	for _, h := range hs {
		hu = append(hu, update[*npds.NetworkPolicyHosts]{name: h.GetName(), version: "static", msg: h})
	}
	defer c.gotType(3)
	return errors.Join(
		c.applyHosts("static", absent(c, npds.NetworkPolicyHostsType, hu), hu),
		c.applyPolicies("static", absent(c, npds.NetworkPolicyType, pu), pu))
}

// absent returns the names held of a type that ups does not carry.
func absent[T any](c *Client, typeURL string, ups []update[T]) []string {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	keep := make(map[string]bool, len(ups))
	for _, u := range ups {
		keep[u.name] = true
	}
	var out []string
	for n := range c.held[typeURL] {
		if !keep[n] {
			out = append(out, n)
		}
	}
	for n := range c.rejected[typeURL] {
		if !keep[n] {
			out = append(out, n)
		}
	}
	return out
}
