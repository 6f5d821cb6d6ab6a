package l7

// Kind is the protocol of a proxied port: which filter enforces its rules.
// The zero Kind is KindNone: the port needs no proxy.
type Kind uint8

// Kinds.
const (
	KindNone Kind = iota
	// KindHTTP: HTTP/1.1, HTTP/2 and gRPC rules, enforced by ward.http in
	// Envoy (also on TLS-intercepted traffic).
	KindHTTP
	// KindKafka: Kafka rules, enforced by ward.kafka in Envoy.
	KindKafka
	// KindDNS: DNS rules, enforced by wardd's DNS proxy (never by Envoy).
	KindDNS
	// KindTLS: only serverNames or TLS interception apply; no
	// request-level rules.
	KindTLS
	// KindGeneric: a generic L7 protocol (Rules.L7Proto, e.g. memcache)
	// with key/value rules, parsed by its stream parser in Envoy (on the
	// TCP stream listeners, with Kafka).
	KindGeneric
)

var kindNames = [...]string{KindNone: "", KindHTTP: "http", KindKafka: "kafka", KindDNS: "dns", KindTLS: "tls", KindGeneric: "l7proto"}

// String is the kind's name as policies and flow records spell it
// ("http", "kafka", "dns", "tls"; "" for KindNone).
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// InEnvoy reports whether the kind's rules are enforced by a filter inside
// Envoy (and so travel in the NPDS resource).
func (k Kind) InEnvoy() bool {
	return k == KindHTTP || k == KindKafka || k == KindTLS || k == KindGeneric
}
