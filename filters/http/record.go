package http

import (
	"strings"
	"time"

	"github.com/wardproxy/ward/flow"
)

// Protocol names for flow records.
const (
	ProtoHTTP1 = "HTTP/1.1"
	ProtoHTTP2 = "HTTP/2"
	ProtoGRPC  = "gRPC"
)

// RecordMeta is the part of a flow record that comes from the connection,
// not the request.
type RecordMeta struct {
	Time        time.Time
	Direction   flow.Direction
	Source      flow.Endpoint
	Destination flow.Endpoint
	Protocol    string // ProtoHTTP1, ProtoHTTP2 or ProtoGRPC; "" when unknown
	// KeepQuery records the path with its query string; by default the
	// query is replaced by RedactedQuery (tokens, API keys and session ids
	// travel in query strings; issue 12).
	KeepQuery bool
}

// RedactedQuery replaces a request's query string in flow records.
const RedactedQuery = "<redacted>"

// RecordPath is the path a flow record shows: path with its query string
// (after the first '?') replaced by RedactedQuery unless keepQuery. The
// path part is kept as sent, so rules on paths stay explainable from
// records.
func RecordPath(path string, keepQuery bool) string {
	if keepQuery {
		return path
	}
	i := strings.IndexByte(path, '?')
	if i < 0 || i == len(path)-1 {
		return path
	}
	return path[:i+1] + RedactedQuery
}

// NewRecord builds the flow record of one decision: verdict, the rule that
// matched (-1 none) and the status ward answered with (0 when the request
// went upstream). It copies method, host and path only: header values —
// and so Authorization, Cookie and headerMatches secrets — never reach a
// record, and the path's query string is redacted unless meta.KeepQuery
// (RecordPath).
func NewRecord(meta *RecordMeta, req *Request, verdict flow.Verdict, reason string, rule, status int) *flow.Record {
	return &flow.Record{
		Time:        meta.Time,
		Direction:   meta.Direction,
		Verdict:     verdict,
		Reason:      reason,
		Source:      meta.Source,
		Destination: meta.Destination,
		Proto:       "http",
		HTTP: &flow.HTTP{
			Method:   req.Method,
			Host:     req.Host,
			Path:     RecordPath(req.Path, meta.KeepQuery),
			Protocol: meta.Protocol,
			Status:   status,
			Rule:     rule,
		},
	}
}
