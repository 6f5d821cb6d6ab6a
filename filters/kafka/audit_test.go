package kafka

import (
	"bytes"
	"testing"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
)

// auditRules is a RuleSource in policy audit mode (Auditor).
type auditRules struct {
	RuleSource
	on bool
}

func (a auditRules) Audit() bool { return a.on }

// TestParserAudit: in audit mode a request the rules deny goes to the
// broker, its response reaches the client, and it is recorded as audited
// (with its Kafka fields); so is a connection no rule covers. Out of
// audit mode the same request is answered with the authorization error.
func TestParserAudit(t *testing.T) {
	rules := staticRules(t, policy.PortRuleKafka{Role: "consume", Topic: "ok"})
	s, o, sink := newConn(t, auditRules{RuleSource: rules, on: true})
	s.OnData(false, false, [][]byte{cat2(fetchReq(1, "ok"), produceReq(2, "ok", 1), fetchReq(3, "no"))})
	if want := cat2(fetchReq(1, "ok"), produceReq(2, "ok", 1), fetchReq(3, "no")); !bytes.Equal(o.toServer, want) {
		t.Fatalf("server got %d bytes; want all three requests (%d)", len(o.toServer), len(want))
	}
	s.OnData(true, false, [][]byte{cat2(brokerResp(1, "a"), brokerResp(2, "b"), brokerResp(3, "c"))})
	if got := corrs(t, o.toClient); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("client got correlation ids %v; want the broker's [1 2 3]", got)
	}
	var verdicts []flow.Verdict
	for _, r := range sink.recs {
		verdicts = append(verdicts, r.Verdict)
	}
	if want := []flow.Verdict{flow.Allowed, flow.Audited, flow.Audited}; len(verdicts) != 3 || verdicts[1] != want[1] || verdicts[2] != want[2] || verdicts[0] != want[0] {
		t.Fatalf("verdicts %v; want %v", verdicts, want)
	}
	if k := sink.recs[1].Kafka; k == nil || k.APIKeyName != "Produce" || k.Topics[0] != "ok" || k.ErrorCode != 0 {
		t.Errorf("audited record = %+v; want the produce to ok, no error code", k)
	}
	if o.closed != "" {
		t.Errorf("closed: %s", o.closed)
	}

	// No rule for the connection: passed and audited, not closed.
	none := RuleSourceFunc(func(bool, uint16, uint32) (*Matcher, bool) { return nil, false })
	s, o, sink = newConn(t, auditRules{RuleSource: none, on: true})
	s.OnData(false, false, [][]byte{fetchReq(1, "x")})
	if !bytes.Equal(o.toServer, fetchReq(1, "x")) || o.closed != "" || len(sink.recs) != 1 || sink.recs[0].Verdict != flow.Audited {
		t.Errorf("no policy in audit mode: server %d bytes, closed %q, records %+v; want passed and audited", len(o.toServer), o.closed, sink.recs)
	}

	// Audit off: denied and answered by ward.
	s, o, sink = newConn(t, auditRules{RuleSource: rules})
	s.OnData(false, false, [][]byte{produceReq(1, "ok", 1)})
	if len(o.toServer) != 0 || len(sink.recs) != 1 || sink.recs[0].Verdict != flow.Denied {
		t.Errorf("audit off: server %d bytes, records %+v; want nothing sent, denied", len(o.toServer), sink.recs)
	}
}
