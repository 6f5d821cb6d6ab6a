// Package flow defines the one record type every ward verdict produces:
// datapath drops, HTTP, Kafka, DNS and TLS decisions alike. Records are
// values; producers fill one and hand it to a Sink. The JSON form (one
// object per line) is the stable interface of `ward monitor` and of the
// access log.
//
// Records never hold secrets: no header values of Authorization, Cookie or
// headerMatches secrets, no TLS keys, no SASL credentials.
package flow

import (
	"net/netip"
	"time"
)

// Verdict is the outcome of a decision.
type Verdict string

// Verdicts.
const (
	Allowed Verdict = "allowed"
	Denied  Verdict = "denied"
	Audited Verdict = "audited" // would have been denied; audit mode let it pass
	Error   Verdict = "error"   // the stream was malformed; the connection was closed
)

// Direction of the traffic relative to the endpoint whose policy decided.
type Direction string

// Directions.
const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Endpoint is one side of a flow.
type Endpoint struct {
	Identity uint32   `json:"identity,omitempty"`
	Labels   []string `json:"labels,omitempty"`
	IP       string   `json:"ip,omitempty"`
	Port     uint16   `json:"port,omitempty"`
}

// Record is one decision.
type Record struct {
	Time        time.Time `json:"time"`
	Direction   Direction `json:"direction,omitempty"`
	Verdict     Verdict   `json:"verdict"`
	Reason      string    `json:"reason,omitempty"`
	Source      Endpoint  `json:"source"`
	Destination Endpoint  `json:"destination"`
	Proto       string    `json:"proto,omitempty"` // "http", "kafka", "dns", "tls", "l3l4"

	HTTP  *HTTP  `json:"http,omitempty"`
	Kafka *Kafka `json:"kafka,omitempty"`
	DNS   *DNS   `json:"dns,omitempty"`
	TLS   *TLS   `json:"tls,omitempty"`
	L4    *L4    `json:"l4,omitempty"`
}

// HTTP holds the HTTP details of a request decision.
type HTTP struct {
	Method   string `json:"method,omitempty"`
	Host     string `json:"host,omitempty"`
	Path     string `json:"path,omitempty"`
	Protocol string `json:"protocol,omitempty"` // "HTTP/1.1", "HTTP/2", "gRPC"
	Status   int    `json:"status,omitempty"`   // the status ward answered with, when it answered
	Rule     int    `json:"rule"`               // index of the matching rule, -1 when none
}

// Kafka holds the Kafka details of a request decision.
type Kafka struct {
	APIKey        int16    `json:"apiKey"`
	APIKeyName    string   `json:"apiKeyName,omitempty"`
	APIVersion    int16    `json:"apiVersion"`
	CorrelationID int32    `json:"correlationID"`
	ClientID      string   `json:"clientID,omitempty"`
	Topics        []string `json:"topics,omitempty"`
	ErrorCode     int16    `json:"errorCode,omitempty"`
}

// DNS holds the details of a DNS decision.
type DNS struct {
	Query string   `json:"query"`
	QType string   `json:"qtype,omitempty"`
	RCode string   `json:"rcode,omitempty"`
	IPs   []string `json:"ips,omitempty"`
	TTL   uint32   `json:"ttl,omitempty"`
}

// TLS holds the details of a TLS decision.
type TLS struct {
	SNI         string `json:"sni,omitempty"`
	Intercepted bool   `json:"intercepted,omitempty"`
}

// L4 holds datapath details.
type L4 struct {
	Protocol string `json:"protocol"` // "TCP", "UDP", "SCTP", "ICMP"
}

// Sink receives records. Implementations must be safe for concurrent use and
// must not block the caller for long (drop and count instead).
type Sink interface {
	Emit(r *Record)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(r *Record)

// Emit calls f(r).
func (f SinkFunc) Emit(r *Record) { f(r) }

// Discard is a Sink that drops every record.
var Discard Sink = SinkFunc(func(*Record) {})

// EndpointAt is the endpoint of identity id at addr ("ip:port"; the
// address is left out when it does not parse).
func EndpointAt(id uint32, addr string) Endpoint {
	e := Endpoint{Identity: id}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		e.IP, e.Port = ap.Addr().String(), ap.Port()
	}
	return e
}
