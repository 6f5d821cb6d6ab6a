package http

import (
	"strconv"
	"strings"
	"time"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
)

// HeaderAccess is what the filter needs of a request inside Envoy: read
// and change its headers (names lower case; ":method", ":path",
// ":authority" work). RequestHeader returns a header's first value, Header
// (HeaderReader) all its values joined with "," as Envoy's header matchers
// see them, so a duplicated header cannot smuggle a second value past an
// exact match. proxylib.HTTPStream implements it. It is used only during
// OnRequestHeaders.
type HeaderAccess interface {
	HeaderWriter
	HeaderReader
	RequestHeader(name string) (string, bool)
}

// RuleSet is the compiled HTTP rules of one policy rule that applies to a
// request, and the rule's name for flow records.
type RuleSet struct {
	Name    string
	Matcher *Matcher // nil: allows nothing
}

// RuleSource finds the rules that apply to a request arriving on c, as
// l7.Select decides them: l7.Deny and l7.NoRule deny; l7.AllowAll allows
// every request (the first returned RuleSet, when there is one, names the
// rule); l7.MatchRules returns the rule sets of the remote, and a request
// is allowed when one of them allows it. Rule sets are appended to
// buf[:0]. Implementations must be safe for concurrent use and should read
// one immutable policy snapshot per call.
type RuleSource interface {
	Rules(c *Conn, buf []RuleSet) (l7.Outcome, []RuleSet)
}

// Describer adds what a flow record needs of the connection beyond Conn
// (source and destination, TLS), only when a record is emitted, so a
// binding does not format addresses per request. It is called during
// OnRequestHeaders only.
type Describer interface {
	Describe(r *flow.Record)
}

// Conn is what the binding knows of the connection a request came on. A
// binding keeps one per stream (it holds the rule buffer).
type Conn struct {
	Ingress        bool
	Port           uint16 // the destination port the policy is keyed by
	RemoteIdentity uint32 // the peer's security identity (DESIGN.md decision 5)
	Source         flow.Endpoint
	Destination    flow.Endpoint
	Protocol       string // ProtoHTTP1 or ProtoHTTP2; gRPC is detected
	// Audit is policy audit mode for the endpoint: a request that would be
	// denied goes through and is recorded as flow.Audited.
	Audit bool
	// NoPolicy, when set, says why no policy applies to the connection
	// (no endpoint owns its address): every request is denied with it as
	// the reason, without asking the RuleSource.
	NoPolicy string
	// Describe, when set, completes each record (see Describer).
	Describe Describer

	buf [4]RuleSet
}

// Action is the filter's decision. When Deny is set the binding answers
// with Status, Headers and Body (Envoy send_response) and stops the
// request; otherwise it continues (header edits are already applied).
type Action struct {
	Deny    bool
	Status  int
	Headers [][2]string // shared: do not modify
	Body    []byte      // shared: do not modify
	Rule    int         // the matching rule of its rule set, -1 when none
	Reason  string
}

// Filter enforces HTTP rules on requests. It is ward.http's logic: the
// binding in proxylib/policyfilter only resolves the connection and
// answers as Action says. The zero value denies every request (no rules).
// A Filter is safe for concurrent use when its RuleSource and Sink are.
type Filter struct {
	Rules RuleSource
	// Sink receives one record per decision; nil means none.
	Sink flow.Sink
	// Now stamps records; nil means time.Now.
	Now func() time.Time
	// RecordQuery keeps query strings in records' paths; by default they
	// are redacted (RecordPath).
	RecordQuery bool
}

// OnRequestHeaders decides on the request whose headers h gives access to,
// arriving on c. An allowed request's header edits (headerMatches
// mismatch actions) are applied to h before it returns. It never panics:
// a panic in a RuleSource or HeaderAccess denies the request.
func (f *Filter) OnRequestHeaders(c *Conn, h HeaderAccess) (act Action) {
	var req Request
	var grpc bool
	defer func() {
		if p := recover(); p != nil {
			act = f.deny(c, &req, grpc, -1, "internal error")
		}
	}()
	req.Method, _ = h.RequestHeader(":method")
	req.Path, _ = h.RequestHeader(":path")
	req.Host, _ = h.RequestHeader(":authority")
	ct, _ := h.RequestHeader("content-type")
	grpc = IsGRPC(ct)
	req.Headers = h

	if c.NoPolicy != "" {
		return f.deny(c, &req, grpc, -1, c.NoPolicy)
	}
	if f.Rules == nil {
		return f.deny(c, &req, grpc, -1, "no policy")
	}
	out, sets := f.Rules.Rules(c, c.buf[:0])
	switch out {
	case l7.AllowAll:
		reason := "l4 allow"
		if len(sets) > 0 && sets[0].Name != "" {
			reason = sets[0].Name
		}
		f.emit(c, &req, grpc, flow.Allowed, reason, -1, 0)
		return Action{Rule: -1, Reason: reason}
	case l7.Deny:
		return f.deny(c, &req, grpc, -1, "deny rule")
	case l7.MatchRules:
	default:
		return f.deny(c, &req, grpc, -1, "no rules for identity "+strconv.FormatUint(uint64(c.RemoteIdentity), 10)+" on port "+strconv.Itoa(int(c.Port)))
	}
	for i := range sets {
		res := sets[i].Matcher.Match(&req)
		if !res.Allowed {
			continue
		}
		for _, e := range res.Edits {
			e.Apply(h)
		}
		reason := sets[i].Name
		if len(res.Notes) > 0 {
			reason = notesReason(reason, res.Notes)
		}
		f.emit(c, &req, grpc, flow.Allowed, reason, res.Rule, 0)
		return Action{Rule: res.Rule, Reason: reason}
	}
	return f.deny(c, &req, grpc, -1, "no http rule matched")
}

// notesReason describes headerMatch mismatches that did not deny, by
// header name and action only (values may be secrets), after the rule's
// name.
func notesReason(name string, notes []HeaderNote) string {
	var b strings.Builder
	if name != "" {
		b.WriteString(name)
		b.WriteString(": ")
	}
	b.WriteString("header mismatch:")
	for i, n := range notes {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte(' ')
		b.WriteString(n.Name)
		b.WriteString(" (")
		b.WriteString(string(n.Action))
		b.WriteString(")")
	}
	return b.String()
}

func (f *Filter) deny(c *Conn, req *Request, grpc bool, rule int, reason string) Action {
	if c.Audit {
		f.emit(c, req, grpc, flow.Audited, reason, rule, 0)
		return Action{Rule: rule, Reason: reason}
	}
	ct := ""
	if grpc {
		ct = "application/grpc"
	}
	status, headers, body := DenyResponse(ct)
	f.emit(c, req, grpc, flow.Denied, reason, rule, status)
	return Action{Deny: true, Status: status, Headers: headers, Body: body, Rule: rule, Reason: reason}
}

func (f *Filter) emit(c *Conn, req *Request, grpc bool, v flow.Verdict, reason string, rule, status int) {
	if f.Sink == nil {
		return
	}
	now := time.Now
	if f.Now != nil {
		now = f.Now
	}
	meta := RecordMeta{Time: now(), Source: c.Source, Destination: c.Destination, Protocol: c.Protocol, Direction: flow.Egress, KeepQuery: f.RecordQuery}
	if c.Ingress {
		meta.Direction = flow.Ingress
	}
	if grpc {
		meta.Protocol = ProtoGRPC
	}
	r := NewRecord(&meta, req, v, reason, rule, status)
	if c.Describe != nil {
		c.Describe.Describe(r)
	}
	f.Sink.Emit(r)
}
