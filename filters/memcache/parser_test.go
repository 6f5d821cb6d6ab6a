package memcache

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
)

type out struct {
	toServer, toClient []byte
	closed             string
}

func (o *out) End(bool) {}
func (o *out) Forward(reply bool, b []byte) {
	if reply {
		o.toClient = append(o.toClient, b...)
	} else {
		o.toServer = append(o.toServer, b...)
	}
}
func (o *out) Close(reason string) { o.closed = reason }

type rulesFunc func() (*Matcher, bool)

func (f rulesFunc) Rules(bool, uint16, uint32) (*Matcher, bool) { return f() }

func newConn(t *testing.T, rules ...l7.GenericRule) (*proxylib.Stream, *out, *[]flow.Record) {
	t.Helper()
	m, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	var recs []flow.Record
	o := &out{}
	s := proxylib.NewStream(NewParserFactory(rulesFunc(func() (*Matcher, bool) { return m, true }), flow.SinkFunc(func(r *flow.Record) { recs = append(recs, *r) })), o,
		&proxylib.ConnInfo{Ingress: true, SrcIdentity: 100, DstIdentity: 200, SrcAddr: "10.0.0.1:5555", DstAddr: "10.0.0.2:11211", DstPort: 11211})
	return s, o, &recs
}

// The seed-like policy: the a-wing may get and set its own key, the
// tracker may only get.
var awing = []l7.GenericRule{{"command": "get", "keyExact": "awing"}, {"command": "set", "keyExact": "awing"}, {"command": "get", "keyPrefix": "fleet/"}}

func TestTextRequests(t *testing.T) {
	s, o, recs := newConn(t, awing...)
	s.OnData(false, false, [][]byte{[]byte("get awing\r\nset awing 0 0 5\r\nhello\r\nset xwing 0 0 3\r\nbad\r\nget fleet/a fleet/b\r\nget awing xwing\r\nflush_all\r\nbogus\r\n")})
	if want := "get awing\r\nset awing 0 0 5\r\nhello\r\nget fleet/a fleet/b\r\n"; string(o.toServer) != want {
		t.Errorf("to server %q, want %q", o.toServer, want)
	}
	// Nothing answered yet: the denials wait behind the allowed requests.
	if len(o.toClient) != 0 {
		t.Errorf("to client before the answers: %q", o.toClient)
	}
	s.OnData(true, false, [][]byte{[]byte("VALUE awing 0 5\r\nhello\r\nEND\r\nSTORED\r\n")})
	// After the set's STORED: the set xwing denial (queued behind the
	// get fleet/..., which is not answered yet, comes after it).
	want := "VALUE awing 0 5\r\nhello\r\nEND\r\nSTORED\r\nCLIENT_ERROR access denied\r\n"
	if string(o.toClient) != want {
		t.Errorf("to client %q, want %q", o.toClient, want)
	}
	s.OnData(true, false, [][]byte{[]byte("END\r\n")})
	want += "END\r\nCLIENT_ERROR access denied\r\nCLIENT_ERROR access denied\r\nERROR\r\n"
	if string(o.toClient) != want {
		t.Errorf("to client %q, want %q", o.toClient, want)
	}
	var denied int
	for _, r := range *recs {
		if r.Verdict == flow.Denied {
			denied++
		}
	}
	if denied != 4 || o.closed != "" {
		t.Errorf("%d denied records, closed %q", denied, o.closed)
	}
}

func binReq(op byte, opaque uint32, key, value string) []byte {
	extras := 0
	if op == 0x01 {
		extras = 8
	}
	b := make([]byte, 24+extras+len(key)+len(value))
	b[0], b[1] = 0x80, op
	binary.BigEndian.PutUint16(b[2:4], uint16(len(key)))
	b[4] = byte(extras)
	binary.BigEndian.PutUint32(b[8:12], uint32(extras+len(key)+len(value)))
	binary.BigEndian.PutUint32(b[12:16], opaque)
	copy(b[24+extras:], key)
	copy(b[24+extras+len(key):], value)
	return b
}

func binResp(op byte, opaque uint32, status uint16, body string) []byte {
	b := make([]byte, 24+len(body))
	b[0], b[1] = 0x81, op
	binary.BigEndian.PutUint16(b[6:8], status)
	binary.BigEndian.PutUint32(b[8:12], uint32(len(body)))
	binary.BigEndian.PutUint32(b[12:16], opaque)
	copy(b[24:], body)
	return b
}

func TestBinaryRequests(t *testing.T) {
	s, o, _ := newConn(t, awing...)
	get, denied, set := binReq(0x00, 1, "awing", ""), binReq(0x00, 2, "xwing", ""), binReq(0x01, 3, "awing", "v")
	s.OnData(false, false, [][]byte{append(append(append([]byte{}, get...), denied...), set...)})
	if want := string(get) + string(set); string(o.toServer) != want {
		t.Fatalf("to server %d bytes, want the get and the set (%d)", len(o.toServer), len(want))
	}
	s.OnData(true, false, [][]byte{binResp(0x00, 1, 0, "value")})
	// The get's answer, then the denial of request 2 in its turn.
	if len(o.toClient) != 2*24+len("value")+len("Access denied") {
		t.Fatalf("to client %d bytes", len(o.toClient))
	}
	d := o.toClient[24+5:]
	if d[0] != 0x81 || binary.BigEndian.Uint16(d[6:8]) != binStatusDenied || binary.BigEndian.Uint32(d[12:16]) != 2 || !strings.Contains(string(d[24:]), "denied") {
		t.Errorf("denial %x", d)
	}
}

func TestRuleValidation(t *testing.T) {
	for _, tc := range []struct {
		r   l7.GenericRule
		err string
	}{
		{l7.GenericRule{"command": "gett"}, "unknown memcached command"},
		{l7.GenericRule{"keyExact": "a", "keyPrefix": "b"}, "mutually exclusive"},
		{l7.GenericRule{"keyRegex": "("}, "keyRegex"},
		{l7.GenericRule{"opcode": "1"}, "unknown key"},
	} {
		if err := Validate([]l7.GenericRule{tc.r}); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v: %v, want %q", tc.r, err, tc.err)
		}
	}
	if err := Validate([]l7.GenericRule{{"command": "GET", "keyRegex": "^a"}, {}}); err != nil {
		t.Error(err)
	}
}

func TestOversizeLineCloses(t *testing.T) {
	s, o, _ := newConn(t)
	s.OnData(false, false, [][]byte{[]byte("get " + strings.Repeat("k", 5000))})
	if o.closed == "" {
		t.Error("a 5000-byte line without its end did not close the connection")
	}
}

// FuzzParser: whatever either side sends, the parser never panics, never
// asks the framework for an impossible operation, and keeps its queue
// bounded.
func FuzzParser(f *testing.F) {
	f.Add([]byte("get awing\r\n"), []byte("END\r\n"))
	f.Add([]byte("set awing 0 0 5\r\nhello\r\n"), []byte("STORED\r\n"))
	f.Add(binReq(0x00, 7, "awing", ""), binResp(0x00, 7, 0, "v"))
	f.Add([]byte("ms awing 2 q\r\nhi\r\nmn\r\n"), []byte("VA 2\r\nhi\r\nMN\r\n"))
	f.Add([]byte("set k 0 0 -1\r\n"), []byte("VALUE k 0 99999999999\r\n"))
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		s, o, _ := newConn(t, awing...)
		for i := 0; i < len(req); i += 7 {
			s.OnData(false, false, [][]byte{req[i:min(i+7, len(req))]})
		}
		s.OnData(true, false, [][]byte{resp})
		if len(o.toServer) > len(req) {
			t.Fatalf("forwarded %d bytes of %d", len(o.toServer), len(req))
		}
	})
}

// TestMatcherAnd: egress rules And a local destination's ingress rules
// allow a request only when both do; nil (allow-all) is the identity.
func TestMatcherAnd(t *testing.T) {
	egress, err := Compile([]l7.GenericRule{{"command": "get"}, {"command": "set"}})
	if err != nil {
		t.Fatal(err)
	}
	ingress, err := Compile([]l7.GenericRule{{"command": "get", "keyPrefix": "public/"}})
	if err != nil {
		t.Fatal(err)
	}
	both := egress.And(ingress)
	for _, c := range []struct {
		cmd  string
		keys []string
		want bool
	}{{"get", []string{"public/a"}, true}, {"get", []string{"secret"}, false}, {"set", []string{"public/a"}, false}, {"delete", []string{"public/a"}, false}} {
		if got := both.Allows(c.cmd, c.keys); got != c.want {
			t.Errorf("%s %v: Allows = %v, want %v", c.cmd, c.keys, got, c.want)
		}
	}
	if !egress.Allows("set", []string{"public/a"}) {
		t.Error("And changed its receiver")
	}
	var all *Matcher
	if all.And(ingress) != ingress || egress.And(nil) != egress {
		t.Error("And with allow-all (nil) is not the other matcher")
	}
}

// auditRules is a RuleSource whose endpoint is in policy audit mode.
type auditRules struct{ m *Matcher }

func (a auditRules) Rules(bool, uint16, uint32) (*Matcher, bool) { return a.m, true }
func (auditRules) Audit() bool                                   { return true }

// TestAuditMode: an endpoint in audit mode gets the requests its policy
// denies passed to the server, recorded as AUDIT; malformed and unknown
// commands are still answered by ward.
func TestAuditMode(t *testing.T) {
	m, err := Compile(awing)
	if err != nil {
		t.Fatal(err)
	}
	var recs []flow.Record
	o := &out{}
	s := proxylib.NewStream(NewParserFactory(auditRules{m}, flow.SinkFunc(func(r *flow.Record) { recs = append(recs, *r) })), o,
		&proxylib.ConnInfo{Ingress: true, SrcIdentity: 100, DstIdentity: 200, SrcAddr: "10.0.0.1:5555", DstAddr: "10.0.0.2:11211", DstPort: 11211})
	s.OnData(false, false, [][]byte{[]byte("get awing\r\nset xwing 0 0 3\r\nbad\r\nbogus\r\n")})
	if want := "get awing\r\nset xwing 0 0 3\r\nbad\r\n"; string(o.toServer) != want {
		t.Errorf("to server %q, want %q", o.toServer, want)
	}
	var verdicts []flow.Verdict
	for _, r := range recs {
		verdicts = append(verdicts, r.Verdict)
	}
	if want := []flow.Verdict{flow.Allowed, flow.Audited, flow.Denied}; !slices.Equal(verdicts, want) {
		t.Errorf("verdicts %v, want %v", verdicts, want)
	}
}
