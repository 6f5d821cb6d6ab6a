package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Defaults of Config, chosen like Cilium's.
const (
	// DefaultUpdateTimeout bounds how long an answer waits for its ipcache
	// and policy updates (Cilium's --tofqdns-proxy-response-max-delay).
	DefaultUpdateTimeout = 100 * time.Millisecond
	// DefaultMaxIPsPerName is the per-endpoint cap of IPs per name. Cilium's
	// --tofqdns-endpoint-max-ip-per-hostname was 50 until 1.16 and is 1000
	// since 1.17, after names such as S3 buckets, which rotate through
	// hundreds of IPs, broke at 50 (cilium#28427). ward uses 1000; the
	// oldest IPs (by last lookup) become zombies when a name exceeds it.
	DefaultMaxIPsPerName = 1000
	// DefaultMaxZombies caps the expired IPs kept for live connections
	// (Cilium's --tofqdns-max-deferred-connection-deletes).
	DefaultMaxZombies = 10000
	// DefaultForwardTimeout bounds one upstream exchange (Cilium's
	// ProxyForwardTimeout).
	DefaultForwardTimeout = 10 * time.Second
	// DefaultGCInterval is how often expired entries are collected.
	DefaultGCInterval = 10 * time.Second
	// DefaultMaxInFlight caps concurrently handled queries; beyond it a
	// query is answered REFUSED (Cilium's dnsproxy-concurrency-limit).
	DefaultMaxInFlight = 4096
)

// Config configures a Proxy. The zero value of every field means its
// documented default.
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
	// RejectNXDomain answers denied queries NXDOMAIN instead of REFUSED
	// (Cilium's --tofqdns-dns-reject-response-code=nameError).
	RejectNXDomain bool
	// UpdateTimeout bounds the wait for ipcache and policy updates before an
	// answer is released anyway (counted in Stats.UpdateTimeouts). Default
	// DefaultUpdateTimeout.
	UpdateTimeout time.Duration
	// MinTTL is the shortest time an IP stays in the FQDN cache, whatever
	// the answer's TTL. Default 0: honour the answer's TTL.
	MinTTL time.Duration
	// MaxIPsPerName caps the IPs of one name per endpoint. Default
	// DefaultMaxIPsPerName.
	MaxIPsPerName int
	// MaxZombies caps the expired IPs kept because connections still use
	// them. Default DefaultMaxZombies.
	MaxZombies int
	// GCInterval is the period of cache garbage collection and state
	// saving. Default DefaultGCInterval.
	GCInterval time.Duration
	// ForwardTimeout bounds one upstream exchange. Default
	// DefaultForwardTimeout. A UDP query whose upstream times out gets no
	// answer: the client retries (as Cilium does).
	ForwardTimeout time.Duration
	// MaxInFlight caps concurrently handled queries. Default
	// DefaultMaxInFlight.
	MaxInFlight int
	// StateFile, when set, is where the FQDN cache is persisted (every
	// GCInterval when it changed, and on shutdown) and restored from at
	// start, so connections to learnt IPs survive a restart. It is also
	// what `ward fqdn` reads.
	StateFile string
	// Mark, when non-zero, is set as SO_MARK on upstream sockets so the
	// datapath does not redirect the proxy's own queries.
	Mark int
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
	}{{"UpdateTimeout", c.UpdateTimeout}, {"MinTTL", c.MinTTL}, {"GCInterval", c.GCInterval}, {"ForwardTimeout", c.ForwardTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s is negative: %v", d.name, d.v))
		}
	}
	if c.MaxIPsPerName < 0 || c.MaxZombies < 0 || c.MaxInFlight < 0 {
		errs = append(errs, errors.New("MaxIPsPerName, MaxZombies and MaxInFlight must not be negative"))
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
