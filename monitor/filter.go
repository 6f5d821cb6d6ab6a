//lint:file-ignore SA1019 the kafka protocol filter reads l7.kafka (deprecated in flow.proto, still filled by Cilium 1.18).

package monitor

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// matcher is one compiled FlowFilter: every field set must match (AND);
// the values of one field are alternatives (OR), as in Hubble.
type matcher []func(*flowpb.Flow) bool

func (m matcher) match(f *flowpb.Flow) bool {
	for _, fn := range m {
		if !fn(f) {
			return false
		}
	}
	return true
}

// filters is a request's whitelist (any matches) and blacklist (none
// matches).
type filters struct {
	white, black []matcher
}

func (fs *filters) match(f *flowpb.Flow) bool {
	if len(fs.white) > 0 && !slices.ContainsFunc(fs.white, func(m matcher) bool { return m.match(f) }) {
		return false
	}
	return !slices.ContainsFunc(fs.black, func(m matcher) bool { return m.match(f) })
}

func compileFilters(white, black []*flowpb.FlowFilter) (*filters, error) {
	fs := &filters{}
	for _, f := range white {
		m, err := compileFilter(f)
		if err != nil {
			return nil, fmt.Errorf("whitelist: %w", err)
		}
		fs.white = append(fs.white, m)
	}
	for _, f := range black {
		m, err := compileFilter(f)
		if err != nil {
			return nil, fmt.Errorf("blacklist: %w", err)
		}
		fs.black = append(fs.black, m)
	}
	return fs, nil
}

// compileFilter compiles the fields ward supports and refuses a filter
// that sets any other (a silently ignored filter would show flows the user
// asked to exclude).
func compileFilter(ff *flowpb.FlowFilter) (matcher, error) {
	var m matcher
	var err error
	ff.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		switch fd.Name() {
		case "source_ip", "destination_ip", "source_pod", "destination_pod", "source_label", "destination_label",
			"source_identity", "destination_identity", "verdict", "traffic_direction", "protocol", "http_method",
			"http_path", "http_url", "http_status_code", "dns_query", "source_port", "destination_port", "node_name", "reply",
			"drop_reason_desc", "ip_version":
			return true
		}
		err = fmt.Errorf("filter %s is not supported by ward's observer", fd.Name())
		return false
	})
	if err != nil {
		return nil, err
	}
	add := func(fn func(*flowpb.Flow) bool) { m = append(m, fn) }
	if v := ff.GetSourceIp(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetIP().GetSource()) })
	}
	if v := ff.GetDestinationIp(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetIP().GetDestination()) })
	}
	if v := ff.GetSourcePod(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return matchPod(v, f.GetSource()) })
	}
	if v := ff.GetDestinationPod(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return matchPod(v, f.GetDestination()) })
	}
	if v := ff.GetSourceLabel(); len(v) > 0 {
		sels, err := parseSelectors(v)
		if err != nil {
			return nil, fmt.Errorf("source_label: %w", err)
		}
		add(func(f *flowpb.Flow) bool { return matchLabels(sels, f.GetSource().GetLabels()) })
	}
	if v := ff.GetDestinationLabel(); len(v) > 0 {
		sels, err := parseSelectors(v)
		if err != nil {
			return nil, fmt.Errorf("destination_label: %w", err)
		}
		add(func(f *flowpb.Flow) bool { return matchLabels(sels, f.GetDestination().GetLabels()) })
	}
	if v := ff.GetSourceIdentity(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetSource().GetIdentity()) })
	}
	if v := ff.GetDestinationIdentity(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetDestination().GetIdentity()) })
	}
	if v := ff.GetVerdict(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetVerdict()) })
	}
	if v := ff.GetDropReasonDesc(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetDropReasonDesc()) })
	}
	if v := ff.GetTrafficDirection(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetTrafficDirection()) })
	}
	if v := ff.GetIpVersion(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return f.GetIP() != nil && slices.Contains(v, f.GetIP().GetIpVersion()) })
	}
	if v := ff.GetReply(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetIsReply().GetValue()) })
	}
	if v := ff.GetNodeName(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetNodeName()) })
	}
	if v := ff.GetProtocol(); len(v) > 0 {
		for _, p := range v {
			switch strings.ToLower(p) {
			case "tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "http", "dns", "kafka":
			default:
				return nil, fmt.Errorf("protocol %q: want tcp, udp, sctp, icmpv4, icmpv6, http, dns or kafka", p)
			}
		}
		add(func(f *flowpb.Flow) bool {
			return slices.ContainsFunc(v, func(p string) bool { return hasProtocol(f, strings.ToLower(p)) })
		})
	}
	if v := ff.GetSourcePort(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, strconv.Itoa(int(srcPort(f)))) })
	}
	if v := ff.GetDestinationPort(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, strconv.Itoa(int(dstPort(f)))) })
	}
	if v := ff.GetHttpMethod(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool {
			h := f.GetL7().GetHttp()
			return h != nil && slices.ContainsFunc(v, func(m string) bool { return strings.EqualFold(m, h.GetMethod()) })
		})
	}
	if v := ff.GetHttpPath(); len(v) > 0 {
		res, err := compileRegexps(v)
		if err != nil {
			return nil, fmt.Errorf("http_path: %w", err)
		}
		add(func(f *flowpb.Flow) bool {
			h := f.GetL7().GetHttp()
			return h != nil && anyMatch(res, urlPath(h.GetUrl()))
		})
	}
	if v := ff.GetHttpUrl(); len(v) > 0 {
		res, err := compileRegexps(v)
		if err != nil {
			return nil, fmt.Errorf("http_url: %w", err)
		}
		add(func(f *flowpb.Flow) bool {
			h := f.GetL7().GetHttp()
			return h != nil && anyMatch(res, h.GetUrl())
		})
	}
	if v := ff.GetHttpStatusCode(); len(v) > 0 {
		for _, s := range v {
			if !validStatus(s) {
				return nil, fmt.Errorf("http_status_code %q: want a code (403) or a class (4+)", s)
			}
		}
		add(func(f *flowpb.Flow) bool {
			h := f.GetL7().GetHttp()
			return h != nil && h.GetCode() != 0 && slices.ContainsFunc(v, func(s string) bool { return matchStatus(s, h.GetCode()) })
		})
	}
	if v := ff.GetDnsQuery(); len(v) > 0 {
		res, err := compileRegexps(v)
		if err != nil {
			return nil, fmt.Errorf("dns_query: %w", err)
		}
		add(func(f *flowpb.Flow) bool {
			d := f.GetL7().GetDns()
			return d != nil && anyMatch(res, d.GetQuery())
		})
	}
	return m, nil
}

func hasProtocol(f *flowpb.Flow, p string) bool {
	l4, l7 := f.GetL4(), f.GetL7()
	switch p {
	case "tcp":
		return l4.GetTCP() != nil
	case "udp":
		return l4.GetUDP() != nil
	case "sctp":
		return l4.GetSCTP() != nil
	case "icmp":
		return l4.GetICMPv4() != nil || l4.GetICMPv6() != nil
	case "icmpv4":
		return l4.GetICMPv4() != nil
	case "icmpv6":
		return l4.GetICMPv6() != nil
	case "http":
		return l7.GetHttp() != nil
	case "dns":
		return l7.GetDns() != nil
	case "kafka":
		return l7.GetKafka() != nil
	}
	return false
}

func srcPort(f *flowpb.Flow) uint32 {
	l4 := f.GetL4()
	return max(l4.GetTCP().GetSourcePort(), l4.GetUDP().GetSourcePort(), l4.GetSCTP().GetSourcePort())
}

func dstPort(f *flowpb.Flow) uint32 {
	l4 := f.GetL4()
	return max(l4.GetTCP().GetDestinationPort(), l4.GetUDP().GetDestinationPort(), l4.GetSCTP().GetDestinationPort())
}

// matchPod matches Hubble's pod filter: "namespace/pod-name-prefix"; an
// empty prefix is every pod of the namespace; without a '/', the prefix in
// any namespace.
func matchPod(pods []string, ep *flowpb.Endpoint) bool {
	if ep.GetPodName() == "" {
		return false
	}
	for _, p := range pods {
		ns, prefix, ok := strings.Cut(p, "/")
		if !ok {
			ns, prefix = "", p
		}
		if ns != "" && ns != ep.GetNamespace() {
			continue
		}
		if strings.HasPrefix(ep.GetPodName(), prefix) {
			return true
		}
	}
	return false
}

// labelReq is one term of a label selector.
type labelReq struct {
	source, key, value string
	op                 byte // '=', '!' (not equal), 'e' (exists), 'n' (does not exist)
}

// parseSelectors parses Hubble's label filters: Kubernetes equality-based
// selectors (k=v, k==v, k!=v, k, !k, comma-separated) whose keys may carry
// a Cilium source prefix (k8s:app=x); any selector matching is enough.
func parseSelectors(sels []string) ([][]labelReq, error) {
	var out [][]labelReq
	for _, s := range sels {
		var reqs []labelReq
		for term := range strings.SplitSeq(s, ",") {
			term = strings.TrimSpace(term)
			if term == "" {
				continue
			}
			var r labelReq
			switch {
			case strings.Contains(term, "!="):
				k, v, _ := strings.Cut(term, "!=")
				r = labelReq{key: k, value: v, op: '!'}
			case strings.Contains(term, "=="):
				k, v, _ := strings.Cut(term, "==")
				r = labelReq{key: k, value: v, op: '='}
			case strings.Contains(term, "="):
				k, v, _ := strings.Cut(term, "=")
				r = labelReq{key: k, value: v, op: '='}
			case strings.HasPrefix(term, "!"):
				r = labelReq{key: term[1:], op: 'n'}
			case strings.ContainsAny(term, " ()"):
				return nil, fmt.Errorf("label selector %q: set-based selectors are not supported", s)
			default:
				r = labelReq{key: term, op: 'e'}
			}
			r.key, r.value = strings.TrimSpace(r.key), strings.TrimSpace(r.value)
			if src, k, ok := strings.Cut(r.key, ":"); ok {
				r.source, r.key = src, k
			}
			if r.source == "any" {
				r.source = ""
			}
			if r.key == "" {
				return nil, fmt.Errorf("label selector %q: empty key", s)
			}
			reqs = append(reqs, r)
		}
		out = append(out, reqs)
	}
	return out, nil
}

func matchLabels(sels [][]labelReq, labels []string) bool {
	lookup := func(r labelReq) (string, bool) {
		for _, l := range labels {
			src, kv, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			if r.source != "" && r.source != src {
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			if k == r.key {
				return v, true
			}
		}
		return "", false
	}
	return slices.ContainsFunc(sels, func(reqs []labelReq) bool {
		for _, r := range reqs {
			v, ok := lookup(r)
			switch r.op {
			case '=':
				if !ok || v != r.value {
					return false
				}
			case '!':
				if ok && v == r.value {
					return false
				}
			case 'e':
				if !ok {
					return false
				}
			case 'n':
				if ok {
					return false
				}
			}
		}
		return true
	})
}

func compileRegexps(v []string) ([]*regexp.Regexp, error) {
	out := make([]*regexp.Regexp, 0, len(v))
	for _, s := range v {
		re, err := regexp.Compile(s)
		if err != nil {
			return nil, err
		}
		out = append(out, re)
	}
	return out, nil
}

func anyMatch(res []*regexp.Regexp, s string) bool {
	return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(s) })
}

// urlPath is the path of an absolute URL (scheme://host/path).
func urlPath(u string) string {
	if _, rest, ok := strings.Cut(u, "://"); ok {
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			return rest[i:]
		}
		return "/"
	}
	return u
}

func validStatus(s string) bool {
	if len(s) == 2 && s[1] == '+' && s[0] >= '1' && s[0] <= '5' {
		return true
	}
	n, err := strconv.Atoi(s)
	return err == nil && n >= 100 && n <= 599 && len(s) == 3
}

func matchStatus(s string, code uint32) bool {
	if len(s) == 2 && s[1] == '+' {
		return code/100 == uint32(s[0]-'0')
	}
	return s == strconv.Itoa(int(code))
}
