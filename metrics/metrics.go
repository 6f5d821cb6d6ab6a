// Package metrics is wardd's Prometheus exposition (client_golang): flow
// verdicts counted as the flow stream sees them (Observe), and the agent's
// state read at scrape time (a Gauges function): FQDN cache sizes,
// identities, policy import errors, xDS delivery per resource type, Envoy
// restarts, flow-stream losses. Every metric is named ward_*; label values
// come from closed sets, never from traffic (no paths, names or free-form
// reasons), so cardinality is bounded.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wardproxy/ward/flow"
)

// Gauges is the agent state a scrape reads.
type Gauges struct {
	FQDNNames, FQDNIPs, FQDNZombies int
	// Identities by type: reserved, endpoint, cidr, fqdn.
	Identities map[string]int
	// PolicyImportErrors is the number of policy files that fail to load
	// now (the last good version of each stays in force).
	PolicyImportErrors int
	// XDS is the delivery state per resource type.
	XDS []XDSType
	// EnvoyStarts counts Envoy processes started (or adopted) by the
	// agent; restarts are the starts after the first.
	EnvoyStarts int
	// DNS proxy counters (cumulative).
	DNSQueries, DNSAllowed, DNSDenied, DNSMalformed, DNSUpstreamErrors, DNSOverload uint64
	// Flow stream: flows that entered the ring, records producers dropped
	// (queue full, socket slow or wardd gone).
	FlowsSeen, FlowsLost uint64
	// BPF datapath flow events: read by the agent, and dropped by the
	// datapath because its ring was full.
	BPFEventsRead, BPFEventsLost uint64
}

// XDSType is the delivery state of one xDS resource type.
type XDSType struct {
	Type string // short name: listener, cluster, network_policy, network_policy_hosts
	// Acked and Rejected count resources applied and rejected by the
	// proxy (per-resource types); Pending the ones not answered yet.
	Acked, Rejected, Pending int
	// NACKed is true while the type's last update was rejected (SotW types).
	NACKed bool
}

// Metrics is one agent's registry.
type Metrics struct {
	reg      *prometheus.Registry
	verdicts *prometheus.CounterVec
	l7       *prometheus.CounterVec
	gauges   func() Gauges
}

// New returns the registry; gauges (may be nil) is called at each scrape.
func New(gauges func() Gauges) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ward_policy_verdicts_total",
			Help: "Policy verdicts of the flow stream by traffic direction, protocol, verdict and reason class.",
		}, []string{"direction", "protocol", "verdict", "reason"}),
		l7: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ward_l7_requests_total",
			Help: "L7 requests decided by the proxies (http, kafka, dns) by verdict.",
		}, []string{"protocol", "verdict"}),
		gauges: gauges,
	}
	m.reg.MustRegister(m.verdicts, m.l7, (*stateCollector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the underlying registry (tests, extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe counts one flow record (a monitor.Hub's OnRecord).
func (m *Metrics) Observe(r *flow.Record) {
	proto := r.Proto
	switch {
	case r.HTTP != nil:
		proto = "http"
	case r.Kafka != nil:
		proto = "kafka"
	case r.DNS != nil:
		proto = "dns"
	case r.TLS != nil:
		proto = "tls"
	}
	switch proto {
	case "http", "kafka", "dns", "tls", "l3l4":
	default:
		proto = "other"
	}
	verdict := string(r.Verdict)
	switch r.Verdict {
	case flow.Allowed, flow.Denied, flow.Audited, flow.Error:
	default:
		verdict = "unknown"
	}
	dir := string(r.Direction)
	if r.Direction != flow.Ingress && r.Direction != flow.Egress {
		dir = "unknown"
	}
	m.verdicts.WithLabelValues(dir, proto, verdict, reasonClass(r)).Inc()
	if proto == "http" || proto == "kafka" || proto == "dns" {
		m.l7.WithLabelValues(proto, verdict).Inc()
	}
}

// reasonClass maps a record's free-form reason to a closed set.
func reasonClass(r *flow.Record) string {
	switch r.Verdict {
	case flow.Allowed:
		return "none"
	case flow.Error:
		return "error"
	}
	switch reason := strings.ToLower(r.Reason); {
	case r.Proto == "l3l4" && r.Verdict == flow.Denied:
		return datapathReason(r.Reason)
	case strings.Contains(reason, "no policy"):
		return "no_policy"
	case r.Verdict == flow.Audited:
		return "audit"
	}
	return "policy_denied"
}

// datapathReason is the reason class of a BPF datapath drop: its Hubble
// drop reason (redirect.Reason.HubbleDropReason, a closed set) in lower
// case, "other" for anything else.
func datapathReason(name string) string {
	switch name {
	case "POLICY_DENIED", "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION", "SOCKET_LOOKUP_FAILED",
		"IP_FRAGMENTATION_NOT_SUPPORTED", "INVALID_PACKET_DROPPED", "INVALID_SOURCE_IP", "INVALID_IPV6_EXTENSION_HEADER",
		"PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", "NO_MATCHING_LOCAL_CONTAINER_FOUND", "UNSUPPORTED_L3_PROTOCOL",
		"VLAN_FILTERED":
		return strings.ToLower(name)
	}
	return "other"
}

var (
	descFQDN        = prometheus.NewDesc("ward_fqdn_cache_entries", "Entries of the DNS proxy's FQDN cache by kind (names, ips, zombies).", []string{"kind"}, nil)
	descIdentities  = prometheus.NewDesc("ward_identities", "Security identities known to the policy by type.", []string{"type"}, nil)
	descImportErrs  = prometheus.NewDesc("ward_policy_import_errors", "Policy files that fail to load now (their last good version stays in force).", nil, nil)
	descXDS         = prometheus.NewDesc("ward_xds_resources", "Per-resource xDS delivery to the proxy by type and state (acked, rejected, pending).", []string{"type", "state"}, nil)
	descXDSNACK     = prometheus.NewDesc("ward_xds_nacked", "1 while the proxy rejects the last update of the type.", []string{"type"}, nil)
	descEnvoyStarts = prometheus.NewDesc("ward_envoy_restarts_total", "Envoy processes started after the first one (crashes, exits).", nil, nil)
	descDNS         = prometheus.NewDesc("ward_dns_queries_total", "DNS queries the proxy received by outcome (allowed, denied, malformed, upstream_error, overload).", []string{"outcome"}, nil)
	descFlowsSeen   = prometheus.NewDesc("ward_flows_seen_total", "Flow records that entered the agent's flow ring.", nil, nil)
	descFlowsLost   = prometheus.NewDesc("ward_flows_lost_total", "Flow records producers dropped before the ring (queue full, socket slow or agent gone).", nil, nil)
	descBPFEvents   = prometheus.NewDesc("ward_bpf_flow_events_total", "Flow events (drops, policy verdicts of new flows) read from the BPF datapath's ring.", nil, nil)
	descBPFLost     = prometheus.NewDesc("ward_bpf_flow_events_lost_total", "Flow events the BPF datapath dropped because its ring was full (it never waits).", nil, nil)
)

// stateCollector reads Gauges at scrape time.
type stateCollector Metrics

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFQDN, descIdentities, descImportErrs, descXDS, descXDSNACK, descEnvoyStarts, descDNS, descFlowsSeen, descFlowsLost, descBPFEvents, descBPFLost} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.gauges == nil {
		return
	}
	g := c.gauges()
	gauge := func(d *prometheus.Desc, v float64, lvs ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lvs...)
	}
	counter := func(d *prometheus.Desc, v float64, lvs ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lvs...)
	}
	gauge(descFQDN, float64(g.FQDNNames), "names")
	gauge(descFQDN, float64(g.FQDNIPs), "ips")
	gauge(descFQDN, float64(g.FQDNZombies), "zombies")
	for _, t := range []string{"reserved", "endpoint", "cidr", "fqdn"} {
		gauge(descIdentities, float64(g.Identities[t]), t)
	}
	gauge(descImportErrs, float64(g.PolicyImportErrors))
	for _, x := range g.XDS {
		gauge(descXDS, float64(x.Acked), x.Type, "acked")
		gauge(descXDS, float64(x.Rejected), x.Type, "rejected")
		gauge(descXDS, float64(x.Pending), x.Type, "pending")
		nack := 0.0
		if x.NACKed {
			nack = 1
		}
		gauge(descXDSNACK, nack, x.Type)
	}
	counter(descEnvoyStarts, float64(max(g.EnvoyStarts-1, 0)))
	counter(descDNS, float64(g.DNSAllowed), "allowed")
	counter(descDNS, float64(g.DNSDenied), "denied")
	counter(descDNS, float64(g.DNSMalformed), "malformed")
	counter(descDNS, float64(g.DNSUpstreamErrors), "upstream_error")
	counter(descDNS, float64(g.DNSOverload), "overload")
	counter(descFlowsSeen, float64(g.FlowsSeen))
	counter(descFlowsLost, float64(g.FlowsLost))
	counter(descBPFEvents, float64(g.BPFEventsRead))
	counter(descBPFLost, float64(g.BPFEventsLost))
}

// Handler serves the exposition.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Server serves /metrics on a TCP address.
type Server struct {
	l   net.Listener
	srv *http.Server
}

// CheckAddress checks a metrics address: host:port on loopback (the
// exposition describes the node's workloads; it is not for the network).
func CheckAddress(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q: want a loopback address", addr)
	}
	return nil
}

// Listen listens on addr (CheckAddress).
func Listen(m *Metrics, addr string, log *slog.Logger) (*Server, error) {
	if err := CheckAddress(addr); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if log != nil {
		srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	}
	return &Server{l: l, srv: srv}, nil
}

// Addr is the address served.
func (s *Server) Addr() net.Addr { return s.l.Addr() }

// Run serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.l) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics: serve: %w", err)
	}
}
