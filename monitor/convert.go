//lint:file-ignore SA1019 Hubble users still read Summary and l7.kafka (deprecated in flow.proto, still filled by Cilium 1.18 and shown by its CLI).

package monitor

import (
	"fmt"
	"net/netip"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardproxy/ward/flow"
)

// Cilium's monitor message types (pkg/monitor/api), Hubble's event_type.
const (
	msgTypeDrop      = 1
	msgTypeTrace     = 4
	msgTypeVerdict   = 5 // policy verdict (the BPF datapath's, per new flow)
	msgTypeAccessLog = 129
)

// Convert turns a ward record into Hubble's flow message: verdict, drop
// reason, IPs, L4 ports, both endpoints (described by desc when non-nil),
// L7 http/dns/kafka, traffic direction, event type and summary.
func Convert(r *flow.Record, node string, desc Describer) *flowpb.Flow {
	f := &flowpb.Flow{
		Time:     timestamppb.New(r.Time),
		NodeName: node,
		IsReply:  wrapperspb.Bool(false),
		Verdict:  verdict(r.Verdict),
	}
	switch r.Direction {
	case flow.Ingress:
		f.TrafficDirection = flowpb.TrafficDirection_INGRESS
	case flow.Egress:
		f.TrafficDirection = flowpb.TrafficDirection_EGRESS
	}
	if r.Verdict == flow.Denied {
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
		if v, ok := flowpb.DropReason_value[r.Reason]; ok && r.Proto == "l3l4" {
			// The datapath names its drop reasons as Hubble does.
			f.DropReasonDesc = flowpb.DropReason(v)
		}
	}
	src, srcOK := netip.ParseAddr(r.Source.IP)
	dst, dstOK := netip.ParseAddr(r.Destination.IP)
	if srcOK == nil || dstOK == nil {
		f.IP = &flowpb.IP{Source: r.Source.IP, Destination: r.Destination.IP, IpVersion: flowpb.IPVersion_IPv4}
		if (srcOK == nil && src.Unmap().Is6()) || (dstOK == nil && dst.Unmap().Is6()) {
			f.IP.IpVersion = flowpb.IPVersion_IPv6
		}
	}
	f.Source = endpoint(desc, src, srcOK == nil, &r.Source)
	f.Destination = endpoint(desc, dst, dstOK == nil, &r.Destination)
	f.L4 = layer4(r)

	l7 := true
	switch {
	case r.HTTP != nil:
		h := &flowpb.HTTP{Method: r.HTTP.Method, Url: httpURL(r), Protocol: r.HTTP.Protocol, Code: uint32(r.HTTP.Status)}
		f.L7 = &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, Record: &flowpb.Layer7_Http{Http: h}}
		if h.Protocol == "" {
			h.Protocol = "HTTP/1.1"
		}
		f.Summary = fmt.Sprintf("%s %s %s", h.Protocol, h.Method, h.Url)
	case r.DNS != nil:
		d := &flowpb.DNS{Query: fqdn(r.DNS.Query), Ips: r.DNS.IPs, Ttl: r.DNS.TTL, Rcode: rcode(r.DNS.RCode), ObservationSource: "proxy"}
		if r.DNS.QType != "" {
			d.Qtypes = []string{r.DNS.QType}
		}
		typ := flowpb.L7FlowType_REQUEST
		f.Summary = fmt.Sprintf("DNS Query %s %s", d.Query, r.DNS.QType)
		if r.Verdict == flow.Allowed && r.DNS.RCode != "" {
			typ = flowpb.L7FlowType_RESPONSE
			f.Summary = fmt.Sprintf("DNS Answer %q TTL: %d (Proxy %s %s)", strings.Join(d.Ips, ","), d.Ttl, d.Query, r.DNS.QType)
		}
		f.L7 = &flowpb.Layer7{Type: typ, Record: &flowpb.Layer7_Dns{Dns: d}}
	case r.Kafka != nil:
		k := &flowpb.Kafka{ErrorCode: int32(r.Kafka.ErrorCode), ApiVersion: int32(r.Kafka.APIVersion), ApiKey: kafkaKey(r.Kafka), CorrelationId: r.Kafka.CorrelationID}
		if len(r.Kafka.Topics) > 0 {
			k.Topic = r.Kafka.Topics[0]
		}
		f.L7 = &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, Record: &flowpb.Layer7_Kafka{Kafka: k}}
		f.Summary = fmt.Sprintf("Kafka request %s correlation id %d topic '%s'", k.ApiKey, k.CorrelationId, k.Topic)
	default:
		l7 = false
	}
	switch {
	case l7:
		f.Type = flowpb.FlowType_L7
		f.EventType = &flowpb.CiliumEventType{Type: msgTypeAccessLog}
	case r.Verdict == flow.Denied:
		f.Type = flowpb.FlowType_L3_L4
		f.EventType = &flowpb.CiliumEventType{Type: msgTypeDrop, SubType: int32(f.DropReasonDesc)}
	case r.Proto == "l3l4":
		f.Type = flowpb.FlowType_L3_L4
		f.EventType = &flowpb.CiliumEventType{Type: msgTypeVerdict}
	default:
		f.Type = flowpb.FlowType_L3_L4
		f.EventType = &flowpb.CiliumEventType{Type: msgTypeTrace}
	}
	if f.Summary == "" && f.L4 != nil {
		f.Summary = l4Summary(f.L4)
	}
	switch {
	case r.Reason == "" || r.Verdict == flow.Allowed:
	case f.Summary == "":
		f.Summary = r.Reason // dropped before its L4 header was read
	default:
		f.Summary += " (" + r.Reason + ")"
	}
	return f
}

func verdict(v flow.Verdict) flowpb.Verdict {
	switch v {
	case flow.Allowed:
		return flowpb.Verdict_FORWARDED
	case flow.Denied:
		return flowpb.Verdict_DROPPED
	case flow.Audited:
		return flowpb.Verdict_AUDIT
	case flow.Error:
		return flowpb.Verdict_ERROR
	}
	return flowpb.Verdict_VERDICT_UNKNOWN
}

func endpoint(desc Describer, ip netip.Addr, ok bool, e *flow.Endpoint) *flowpb.Endpoint {
	out := &flowpb.Endpoint{Identity: e.Identity}
	if desc != nil && ok {
		info := desc.Describe(ip.Unmap(), e.Identity)
		out.ID = uint32(info.ID)
		if out.Identity == 0 {
			out.Identity = info.Identity
		}
		out.Namespace, out.PodName, out.Labels = info.Namespace, info.PodName, info.Labels
	}
	if out.PodName == "" {
		// A producer's own labels (endpoint:<name> from the filters).
		for _, l := range e.Labels {
			if name, ok := strings.CutPrefix(l, "endpoint:"); ok {
				out.PodName = name
			}
		}
	}
	return out
}

func layer4(r *flow.Record) *flowpb.Layer4 {
	proto := ""
	if r.L4 != nil {
		proto = r.L4.Protocol
	}
	if proto == "" && (r.HTTP != nil || r.Kafka != nil || r.TLS != nil) {
		proto = "TCP"
	}
	sp, dp := uint32(r.Source.Port), uint32(r.Destination.Port)
	switch strings.ToUpper(proto) {
	case "TCP":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: sp, DestinationPort: dp}}}
	case "UDP":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: sp, DestinationPort: dp}}}
	case "SCTP":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: sp, DestinationPort: dp}}}
	case "ICMP", "ICMPV4":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{}}}
	case "ICMPV6":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{}}}
	}
	return nil
}

func l4Summary(l *flowpb.Layer4) string {
	switch {
	case l.GetTCP() != nil:
		return "TCP"
	case l.GetUDP() != nil:
		return "UDP"
	case l.GetSCTP() != nil:
		return "SCTP"
	}
	return "ICMP"
}

// httpURL is the request's URL as Hubble shows it: scheme, host, path
// (its query already redacted by the producer).
func httpURL(r *flow.Record) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	host := r.HTTP.Host
	if host == "" {
		host = r.Destination.IP
	}
	return scheme + "://" + host + r.HTTP.Path
}

func fqdn(name string) string {
	if name != "" && !strings.HasSuffix(name, ".") {
		return name + "."
	}
	return name
}

// rcode maps a DNS rcode name to its number (Hubble's dns.rcode).
func rcode(name string) uint32 {
	switch strings.ToUpper(name) {
	case "", "NOERROR":
		return 0
	case "FORMERR":
		return 1
	case "SERVFAIL":
		return 2
	case "NXDOMAIN":
		return 3
	case "NOTIMP":
		return 4
	case "REFUSED":
		return 5
	}
	return 0
}

// kafkaKey is Cilium's api_key string: the lower-case API name.
func kafkaKey(k *flow.Kafka) string {
	if k.APIKeyName != "" {
		return strings.ToLower(k.APIKeyName)
	}
	return fmt.Sprint(k.APIKey)
}
