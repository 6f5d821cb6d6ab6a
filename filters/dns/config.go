package dns

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Defaults of Config. Those with a Cilium flag take that flag's default in
// Cilium 1.18 (the release whose documentation ward follows); the others
// are ward's own caps, which Cilium does not have.
const (
	// DefaultUpdateTimeout bounds how long an answer waits for its ipcache
	// and policy updates (Cilium's --tofqdns-proxy-response-max-delay,
	// 100ms).
	DefaultUpdateTimeout = 100 * time.Millisecond
	// DefaultMaxIPsPerName is the per-endpoint cap of IPs per name. Cilium's
	// --tofqdns-endpoint-max-ip-per-hostname was 50 until 1.16 (the 1.18
	// policy docs still say 50) and is 1000 since 1.17, after names such as
	// S3 buckets, which rotate through hundreds of IPs, broke at 50
	// (cilium#28427). ward uses 1000; the oldest IPs (by last lookup)
	// become zombies when a name exceeds it.
	DefaultMaxIPsPerName = 1000
	// DefaultMaxZombies caps the expired IPs kept for live connections
	// (Cilium's --tofqdns-max-deferred-connection-deletes, 10000).
	DefaultMaxZombies = 10000
	// DefaultMaxNamesPerEndpoint caps the names one endpoint has live IPs
	// for (ward's; Cilium has no such cap, and its agent's memory grows
	// without bound when a pod keeps resolving fresh names, cilium#47128).
	// Beyond it the endpoint's least recently looked-up name is evicted:
	// its IPs become zombies, kept while connections use them.
	DefaultMaxNamesPerEndpoint = 10000
	// DefaultMaxNames caps the (endpoint, name) pairs with live IPs on the
	// node (ward's), evicting the least recently looked-up pair likewise.
	// With DefaultMaxIPsPerName it bounds the cache, and so the state file.
	DefaultMaxNames = 100000
	// DefaultMaxTTL caps how long an IP stays in the cache, and the TTLs of
	// the answer released to the client, so that the client never caches an
	// answer longer than ward keeps its IPs (ward's; one day, as unbound's
	// cache-max-ttl; RFC 2181 section 8 lets resolvers cap TTLs). Cilium has
	// no maximum.
	DefaultMaxTTL = 24 * time.Hour
	// DefaultForwardTimeout bounds one upstream exchange (Cilium's
	// ProxyForwardTimeout, 10s; not a flag).
	DefaultForwardTimeout = 10 * time.Second
	// DefaultGCInterval is how often expired entries are collected and the
	// state file saved.
	DefaultGCInterval = 10 * time.Second
	// DefaultMaxInFlight caps concurrently handled queries; beyond it a
	// query is answered REFUSED (Cilium's --dnsproxy-concurrency-limit,
	// whose default 0 means no limit; ward always bounds its goroutines).
	DefaultMaxInFlight = 4096
)

// Config configures a Proxy. The zero value of every field means its
// documented default.
//
// Config is also the "dns" section of wardd's node config: its JSON form
// (MarshalJSON, UnmarshalJSON) holds the tunables only, under camelCase
// names, with durations as Go duration strings ("100ms", "1h"); the
// listener and deployment fields (addresses, Transparent, Upstream,
// StateFile, Mark) are the agent's to set and have no JSON form. Unknown
// JSON fields are rejected.
type Config struct {
	// UDPAddr and TCPAddr are the addresses to listen on. Empty means no
	// listener of that kind; at least one is required. Port 0 picks a free
	// port (see Proxy.UDPAddr, Proxy.TCPAddr); when both are the same
	// address with port 0, TCP binds the port UDP got.
	UDPAddr, TCPAddr string
	// Transparent makes the listeners IP_TRANSPARENT sockets receiving
	// TPROXY-redirected queries: the original destination of each query
	// (IP_RECVORIGDSTADDR for UDP, the accepted socket's local address for
	// TCP) is where it is forwarded and where the answer comes from. Needs
	// CAP_NET_ADMIN.
	Transparent bool
	// Upstream, when valid, is the server every allowed query is forwarded
	// to, whatever its original destination (non-transparent use: tests,
	// benchmarks, a node-local resolver). Rules are then looked up with
	// Upstream as the destination.
	Upstream netip.AddrPort
	// RejectNXDomain answers denied queries NXDOMAIN instead of REFUSED.
	// JSON "rejectResponseCode": "refused" (default) or "nameError", as
	// Cilium's --tofqdns-dns-reject-response-code.
	RejectNXDomain bool
	// UpdateTimeout bounds the wait for ipcache and policy updates before an
	// answer is released anyway (counted in Stats.UpdateTimeouts). Default
	// DefaultUpdateTimeout. JSON "proxyResponseMaxDelay" (Cilium's
	// --tofqdns-proxy-response-max-delay).
	UpdateTimeout time.Duration
	// MinTTL is the shortest time an IP stays in the FQDN cache, whatever
	// the answer's TTL. Default 0: honour the answer's TTL. JSON "minTTL"
	// (Cilium's --tofqdns-min-ttl, in seconds there).
	MinTTL time.Duration
	// MaxTTL is the longest: longer TTLs are cut to it, in the cache and in
	// the answer the client gets. Default DefaultMaxTTL; it must not be
	// below MinTTL. JSON "maxTTL" (ward's).
	MaxTTL time.Duration
	// MaxIPsPerName caps the IPs of one name per endpoint. Default
	// DefaultMaxIPsPerName. JSON "maxIPsPerHostname" (Cilium's
	// --tofqdns-endpoint-max-ip-per-hostname).
	MaxIPsPerName int
	// MaxZombies caps the expired IPs kept because connections still use
	// them. Default DefaultMaxZombies. JSON "maxDeferredConnectionDeletes"
	// (Cilium's --tofqdns-max-deferred-connection-deletes).
	MaxZombies int
	// MaxNamesPerEndpoint caps the names one endpoint has live IPs for.
	// Default DefaultMaxNamesPerEndpoint. JSON "maxNamesPerEndpoint"
	// (ward's).
	MaxNamesPerEndpoint int
	// MaxNames caps the (endpoint, name) pairs with live IPs on the node.
	// Default DefaultMaxNames. JSON "maxNames" (ward's).
	MaxNames int
	// GCInterval is the period of cache garbage collection and state
	// saving. Default DefaultGCInterval. JSON "gcInterval".
	GCInterval time.Duration
	// ForwardTimeout bounds one upstream exchange. Default
	// DefaultForwardTimeout. A UDP query whose upstream times out gets no
	// answer: the client retries (as Cilium does). JSON "forwardTimeout".
	ForwardTimeout time.Duration
	// MaxInFlight caps concurrently handled queries. Default
	// DefaultMaxInFlight. JSON "concurrencyLimit" (Cilium's
	// --dnsproxy-concurrency-limit).
	MaxInFlight int
	// StateFile, when set, is where the FQDN cache is persisted (every
	// GCInterval when it changed, and on shutdown) and restored from at
	// start, so connections to learnt IPs survive a restart. It is also
	// what `ward fqdn` reads. Its size is bounded by the caps above: a
	// restored file is held to them too.
	StateFile string
	// Mark, when non-zero, is set as SO_MARK on upstream sockets so the
	// datapath does not redirect the proxy's own queries.
	Mark int
}

// Reject response codes of the JSON form (Cilium's
// --tofqdns-dns-reject-response-code values).
const (
	RejectRefused   = "refused"
	RejectNameError = "nameError"
)

// configJSON is Config's JSON form: the tunables.
type configJSON struct {
	RejectResponseCode           string   `json:"rejectResponseCode,omitempty"`
	ProxyResponseMaxDelay        duration `json:"proxyResponseMaxDelay,omitempty"`
	MinTTL                       duration `json:"minTTL,omitempty"`
	MaxTTL                       duration `json:"maxTTL,omitempty"`
	MaxIPsPerHostname            int      `json:"maxIPsPerHostname,omitempty"`
	MaxDeferredConnectionDeletes int      `json:"maxDeferredConnectionDeletes,omitempty"`
	MaxNamesPerEndpoint          int      `json:"maxNamesPerEndpoint,omitempty"`
	MaxNames                     int      `json:"maxNames,omitempty"`
	GCInterval                   duration `json:"gcInterval,omitempty"`
	ForwardTimeout               duration `json:"forwardTimeout,omitempty"`
	ConcurrencyLimit             int      `json:"concurrencyLimit,omitempty"`
}

// duration is a time.Duration written as a Go duration string.
type duration time.Duration

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"100ms\" or \"1h\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	*d = duration(v)
	return nil
}

// MarshalJSON writes the tunables (zero fields, meaning their defaults, are
// left out).
func (c Config) MarshalJSON() ([]byte, error) {
	j := configJSON{
		ProxyResponseMaxDelay: duration(c.UpdateTimeout), MinTTL: duration(c.MinTTL), MaxTTL: duration(c.MaxTTL),
		MaxIPsPerHostname: c.MaxIPsPerName, MaxDeferredConnectionDeletes: c.MaxZombies,
		MaxNamesPerEndpoint: c.MaxNamesPerEndpoint, MaxNames: c.MaxNames,
		GCInterval: duration(c.GCInterval), ForwardTimeout: duration(c.ForwardTimeout), ConcurrencyLimit: c.MaxInFlight,
	}
	if c.RejectNXDomain {
		j.RejectResponseCode = RejectNameError
	}
	return json.Marshal(j)
}

// UnmarshalJSON sets the tunables present in b, leaving the other fields as
// they are. Unknown fields and unknown reject codes are errors.
func (c *Config) UnmarshalJSON(b []byte) error {
	var j configJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("dns config: %w", err)
	}
	switch j.RejectResponseCode {
	case "":
	case RejectRefused:
		c.RejectNXDomain = false
	case RejectNameError:
		c.RejectNXDomain = true
	default:
		return fmt.Errorf("dns config: rejectResponseCode %q: want %q or %q", j.RejectResponseCode, RejectRefused, RejectNameError)
	}
	setDur := func(dst *time.Duration, v duration) {
		if v != 0 {
			*dst = time.Duration(v)
		}
	}
	setInt := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	setDur(&c.UpdateTimeout, j.ProxyResponseMaxDelay)
	setDur(&c.MinTTL, j.MinTTL)
	setDur(&c.MaxTTL, j.MaxTTL)
	setInt(&c.MaxIPsPerName, j.MaxIPsPerHostname)
	setInt(&c.MaxZombies, j.MaxDeferredConnectionDeletes)
	setInt(&c.MaxNamesPerEndpoint, j.MaxNamesPerEndpoint)
	setInt(&c.MaxNames, j.MaxNames)
	setDur(&c.GCInterval, j.GCInterval)
	setDur(&c.ForwardTimeout, j.ForwardTimeout)
	setInt(&c.MaxInFlight, j.ConcurrencyLimit)
	return nil
}

// Validate reports configuration errors.
func (c *Config) Validate() error {
	var errs []error
	if c.UDPAddr == "" && c.TCPAddr == "" {
		errs = append(errs, errors.New("no listener: set UDPAddr or TCPAddr"))
	}
	if !c.Transparent && !c.Upstream.IsValid() {
		errs = append(errs, errors.New("non-transparent proxy needs an Upstream"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"UpdateTimeout", c.UpdateTimeout}, {"MinTTL", c.MinTTL}, {"MaxTTL", c.MaxTTL}, {"GCInterval", c.GCInterval}, {"ForwardTimeout", c.ForwardTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s is negative: %v", d.name, d.v))
		}
	}
	if c.MaxIPsPerName < 0 || c.MaxZombies < 0 || c.MaxInFlight < 0 || c.MaxNamesPerEndpoint < 0 || c.MaxNames < 0 {
		errs = append(errs, errors.New("MaxIPsPerName, MaxZombies, MaxNamesPerEndpoint, MaxNames and MaxInFlight must not be negative"))
	}
	if maxTTL := c.withDefaults().MaxTTL; c.MinTTL > maxTTL {
		errs = append(errs, fmt.Errorf("MinTTL %v is above MaxTTL %v", c.MinTTL, maxTTL))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.UpdateTimeout == 0 {
		c.UpdateTimeout = DefaultUpdateTimeout
	}
	if c.MaxIPsPerName == 0 {
		c.MaxIPsPerName = DefaultMaxIPsPerName
	}
	if c.MaxZombies == 0 {
		c.MaxZombies = DefaultMaxZombies
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = DefaultMaxTTL
	}
	if c.MaxNamesPerEndpoint == 0 {
		c.MaxNamesPerEndpoint = DefaultMaxNamesPerEndpoint
	}
	if c.MaxNames == 0 {
		c.MaxNames = DefaultMaxNames
	}
	if c.GCInterval == 0 {
		c.GCInterval = DefaultGCInterval
	}
	if c.ForwardTimeout == 0 {
		c.ForwardTimeout = DefaultForwardTimeout
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	return c
}
