package xds

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

// Delivery of the policy resources, resource by resource.
//
// The in-Envoy client (proxylib/npdsclient) applies each resource of a
// delta on its own and NACKs naming every resource it currently rejects
// (a google.rpc.BadRequest field violation per resource name). The delta
// server of go-control-plane records a resource as known to the client
// when it sends it, at the version it sent (a hash of its content), and
// sends it again only when that version changes. A rejected resource
// whose rejection depends on other resources (an address another endpoint
// still owned) would then never reach the client once those change. So
// after a NACK the server resyncs: with the next change of the type the
// rejected resources are sent again (resyncCache), and the proxy's
// per-resource state (proxyState) is what Resources reports.

// ResourceStatus is what the proxy holds of one policy resource.
type ResourceStatus struct {
	Name string
	// Version is the version the server publishes: the hash of the
	// resource's content, the delta protocol's resource version.
	Version string
	// Acked: the proxy applied this version.
	Acked bool
	// Error says why the proxy rejected this version ("" if it did not);
	// the proxy keeps the previous version of the resource, if any.
	Error string
}

// Resources returns the status of every policy resource of a type
// (npds.NetworkPolicyType or npds.NetworkPolicyHostsType) the server
// publishes, by name. It is built from the acknowledgements of the proxy's
// streams (one proxy per node); other types return nil.
func (s *Server) Resources(typeURL string) []ResourceStatus {
	c := s.policyCache(typeURL)
	if c == nil {
		return nil
	}
	c.mu.Lock()
	cur := maps.Clone(c.cur) // setAll changes it in place
	c.mu.Unlock()
	out := make([]ResourceStatus, 0, len(cur))
	for _, n := range slices.Sorted(maps.Keys(cur)) {
		rs := ResourceStatus{Name: n}
		if b, err := cache.MarshalResource(cur[n]); err == nil {
			rs.Version = cache.HashResource(b)
		}
		out = append(out, rs)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.proxy[typeURL]
	for i := range out {
		r := &out[i]
		r.Acked = r.Version != "" && ps.applied[r.Name] == r.Version
		if rej, ok := ps.rejected[r.Name]; ok && rej.version == r.Version {
			r.Error = rej.err
		}
	}
	return out
}

func (s *Server) policyCache(typeURL string) *resyncCache {
	switch typeURL {
	case s.policies.typeURL:
		return s.policies
	case s.hosts.typeURL:
		return s.hosts
	}
	return nil
}

// streamNonce names one response: nonces count per stream.
type streamNonce struct {
	stream int64
	nonce  string
}

// sentResponse is what one delta response carried.
type sentResponse struct {
	version   string            // the response's system version
	gen       uint64            // its cache generation (policy types)
	resources map[string]string // name -> version
	removed   []string
}

// sentDelta records a delta response until its ACK or NACK.
func (s *Server) sentDelta(stream int64, r *discovery.DeltaDiscoveryResponse) {
	sr := sentResponse{version: r.GetSystemVersionInfo(), resources: make(map[string]string, len(r.GetResources())), removed: r.GetRemovedResources()}
	if c := s.policyCache(r.GetTypeUrl()); c != nil {
		sr.gen, _ = strconv.ParseUint(strings.TrimPrefix(sr.version, c.prefix), 10, 64)
	}
	for _, res := range r.GetResources() {
		sr.resources[res.GetName()] = res.GetVersion()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sent) > 4096 { // responses never answered (closed streams)
		clear(s.sent)
	}
	s.sent[streamNonce{stream, r.GetNonce()}] = sr
}

// proxyState is what the proxy holds of one policy type, as its ACKs and
// NACKs say.
type proxyState struct {
	applied  map[string]string    // name -> version in force
	rejected map[string]rejection // name -> the version rejected
}

type rejection struct{ version, err string }

func newProxyState() *proxyState {
	return &proxyState{applied: map[string]string{}, rejected: map[string]rejection{}}
}

// observe folds the answer to sent into the state; rejected is every
// resource the proxy currently rejects, with the reason (empty: an ACK).
func (p *proxyState) observe(sent sentResponse, rejected map[string]string) {
	for _, n := range sent.removed {
		delete(p.applied, n)
		delete(p.rejected, n)
	}
	for n, v := range sent.resources {
		if msg, bad := rejected[n]; bad {
			p.rejected[n] = rejection{version: v, err: msg}
			continue
		}
		p.applied[n] = v
		delete(p.rejected, n)
	}
	for n, msg := range rejected {
		if _, inResp := sent.resources[n]; !inResp {
			r := p.rejected[n] // rejected in an earlier response, still
			r.err = msg
			p.rejected[n] = r
		}
	}
	for n := range p.rejected {
		if _, still := rejected[n]; !still {
			delete(p.rejected, n)
		}
	}
}

// rejectedResources reads the resources a NACK names: the field
// violations of a google.rpc.BadRequest detail, by resource name.
func rejectedResources(st *statuspb.Status) map[string]string {
	out := map[string]string{}
	for _, d := range st.GetDetails() {
		br := &errdetails.BadRequest{}
		if !d.MessageIs(br) || d.UnmarshalTo(br) != nil {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			out[v.GetField()] = v.GetDescription()
		}
	}
	return out
}

// resyncCache is the LinearCache of one policy type. It keeps the set last
// published (to send only what changed and to report status), mirrors the
// cache's version counter, and, for a watch opened by a NACK that names
// resources, presents those resources as unknown to the client once the
// type has changed since the NACKed response: the cache then sends them
// again with that change (or their removal). Not before — a resource that
// cannot compile would otherwise be resent and rejected in a loop.
type resyncCache struct {
	*cache.LinearCache
	typeURL, prefix string
	// pending returns the generation of the response a request NACKs
	// with named resources (set once by New).
	pending func(*discovery.DeltaDiscoveryRequest) (uint64, bool)

	mu  sync.Mutex                // serializes changes; taken before the cache's own lock
	cur map[string]types.Resource // the set last published; read and changed under mu
	// last is the slice of the set last published ([]T of setAll):
	// never modified (setAll's contract), so a message in the same
	// place of the next set is known unchanged by its pointer.
	last any
	// gen mirrors the LinearCache's version counter: it is bumped just
	// before each change, so during the cache's notification it already
	// names the new version.
	gen atomic.Uint64
}

func newResyncCache(typeURL, prefix string) *resyncCache {
	return &resyncCache{LinearCache: cache.NewLinearCache(typeURL, cache.WithVersionPrefix(prefix)), typeURL: typeURL, prefix: prefix, cur: map[string]types.Resource{}}
}

// CreateDeltaWatch implements cache.ConfigWatcher.
func (c *resyncCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	if c.pending != nil {
		if at, ok := c.pending(req); ok {
			sub = &resyncSub{Subscription: sub, gen: &c.gen, at: at, rejected: rejectedResources(req.GetErrorDetail())}
		}
	}
	return c.LinearCache.CreateDeltaWatch(req, sub, ch)
}

// resyncSub is a subscription whose rejected resources count as unknown
// to the client once the cache moved past generation at.
type resyncSub struct {
	cache.Subscription
	gen      *atomic.Uint64
	at       uint64
	rejected map[string]string
}

func (s *resyncSub) ReturnedResources() map[string]string {
	rr := s.Subscription.ReturnedResources()
	if s.gen.Load() <= s.at {
		return rr
	}
	out := maps.Clone(rr)
	for n := range s.rejected {
		if _, ok := out[n]; ok {
			out[n] = "" // known, at no version: resent if present, removed if not
		}
	}
	return out
}

// setAll replaces the resources of c with rs and returns the version that
// names the result. Resources equal to the previous ones keep their place
// in the cache (the client is sent only what changed); an unchanged set
// returns the current version. rs must not be modified afterwards, and
// names each resource once (one policy per endpoint, one hosts entry per
// identity: a repeated name could hide a removed one).
func setAll[T types.ResourceWithName](s *Server, c *resyncCache, rs []T) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Most publishes change one resource of thousands, or none: find the
	// changes against the current set, and change only those.
	changed := map[string]types.Resource{}
	if last, ok := c.last.([]T); ok && len(last) == len(rs) && len(rs) > 0 {
		// Against the last set, place by place: the same message in
		// the same place is unchanged (messages are never modified)
		// without a look-up; a different one under the same name is
		// compared. A name moved or replaced falls back to the full
		// comparison below.
		same := true
		for i, r := range rs {
			if any(r) == any(last[i]) {
				continue
			}
			n := r.GetName()
			if n != last[i].GetName() {
				same = false
				break
			}
			if old := c.cur[n]; !proto.Equal(old, r) {
				changed[n] = r
			}
		}
		if same {
			return c.publish(s, rs, changed, nil)
		}
		clear(changed)
	}
	seen := 0
	for _, r := range rs {
		n := r.GetName()
		old, ok := c.cur[n]
		if ok {
			seen++
		}
		// The same message (a translation cache hit) is unchanged
		// without comparing it field by field.
		if !ok || (old != types.Resource(r) && !proto.Equal(old, r)) {
			changed[n] = r
		}
	}
	var removed []string
	if seen != len(c.cur) {
		// Some current resource is gone.
		names := make(map[string]bool, len(rs))
		for _, r := range rs {
			names[r.GetName()] = true
		}
		for n := range c.cur {
			if !names[n] {
				removed = append(removed, n)
			}
		}
	}
	return c.publish(s, rs, changed, removed)
}

// publish records rs as the set last published and the changes in it
// (c.mu held) and returns its version.
func (c *resyncCache) publish(s *Server, rs any, changed map[string]types.Resource, removed []string) string {
	c.last = rs
	if len(changed) == 0 && len(removed) == 0 {
		return c.prefix + strconv.FormatUint(c.gen.Load(), 10)
	}
	// In place (under c.mu, as every reader): a change of one resource
	// of 10,000 copies nothing.
	for n, r := range changed {
		c.cur[n] = r
	}
	for _, n := range removed {
		delete(c.cur, n)
	}
	gen := c.gen.Add(1)
	if err := c.UpdateResources(changed, removed); err != nil {
		s.log.Error("policy resources: notify watches", "type", c.typeURL, "error", err)
	}
	return c.prefix + strconv.FormatUint(gen, 10)
}
