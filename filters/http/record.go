package http

import (
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
}

// NewRecord builds the flow record of one decision: verdict, the rule that
// matched (-1 none) and the status ward answered with (0 when the request
// went upstream). It copies method, host and path only: header values —
// and so Authorization, Cookie and headerMatches secrets — never reach a
// record.
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
			Path:     req.Path,
			Protocol: meta.Protocol,
			Status:   status,
			Rule:     rule,
		},
	}
}
