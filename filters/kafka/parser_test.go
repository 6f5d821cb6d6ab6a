package kafka

import (
	"bytes"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/proxylib"
)

type out struct {
	toServer, toClient []byte
	closed             string
	ended              [2]bool // client, server
}

func (o *out) End(reply bool) {
	if reply {
		o.ended[1] = true
	} else {
		o.ended[0] = true
	}
}

func (o *out) Forward(reply bool, b []byte) {
	if reply {
		o.toClient = append(o.toClient, b...)
	} else {
		o.toServer = append(o.toServer, b...)
	}
}
func (o *out) Close(reason string) { o.closed = reason }

type sinkRec struct {
	mu   sync.Mutex
	recs []flow.Record
}

func (s *sinkRec) Emit(r *flow.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, *r)
}

func staticRules(t *testing.T, rules ...policy.PortRuleKafka) RuleSource {
	m, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	return RuleSourceFunc(func(bool, uint16, uint32) (*Matcher, bool) { return m, true })
}

func newConn(t *testing.T, rs RuleSource) (*proxylib.Stream, *out, *sinkRec) {
	sink := &sinkRec{}
	o := &out{}
	s := proxylib.NewStream(NewParserFactory(rs, sink), o, &proxylib.ConnInfo{
		Ingress: true, SrcIdentity: 100, DstIdentity: 200, SrcAddr: "10.0.0.1:5555", DstAddr: "10.0.0.2:9092", DstPort: 9092,
	})
	return s, o, sink
}

func produceReq(corr int32, topic string, acks int16) []byte {
	r := kmsg.NewPtrProduceRequest()
	r.SetVersion(9)
	r.Acks = acks
	tp := kmsg.NewProduceRequestTopic()
	tp.Topic = topic
	p := kmsg.NewProduceRequestTopicPartition()
	p.Records = []byte("records")
	tp.Partitions = append(tp.Partitions, p)
	r.Topics = append(r.Topics, tp)
	return sizePrefixed(frame(r, corr, "cli"))
}

func fetchReq(corr int32, topic string) []byte {
	r := kmsg.NewPtrFetchRequest()
	r.SetVersion(11)
	tp := kmsg.NewFetchRequestTopic()
	tp.Topic = topic
	tp.Partitions = append(tp.Partitions, kmsg.NewFetchRequestTopicPartition())
	r.Topics = append(r.Topics, tp)
	return sizePrefixed(frame(r, corr, "cli"))
}

// brokerResp is a response frame with header v0 and an opaque body.
func brokerResp(corr int32, body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(4+len(body)))
	b = binary.BigEndian.AppendUint32(b, uint32(corr))
	return append(b, body...)
}

func corrs(t *testing.T, b []byte) []int32 {
	var cs []int32
	for len(b) >= 8 {
		n := int(binary.BigEndian.Uint32(b))
		cs = append(cs, int32(binary.BigEndian.Uint32(b[4:])))
		b = b[4+n:]
	}
	if len(b) != 0 {
		t.Fatalf("%d trailing bytes", len(b))
	}
	return cs
}

func TestParserOrderAndDeny(t *testing.T) {
	s, o, sink := newConn(t, staticRules(t, policy.PortRuleKafka{Role: "consume", Topic: "ok"}))
	// An allowed fetch goes to the broker; a denied produce right behind it
	// must be answered after the fetch's response.
	s.OnData(false, false, [][]byte{cat2(fetchReq(1, "ok"), produceReq(2, "ok", 1), fetchReq(3, "no"))})
	if !bytes.Equal(o.toServer, fetchReq(1, "ok")) {
		t.Fatalf("server got %d bytes; want only the allowed fetch", len(o.toServer))
	}
	if len(o.toClient) != 0 {
		t.Fatal("deny response sent before the earlier response")
	}
	s.OnData(true, false, [][]byte{brokerResp(1, "fetched")})
	if got := corrs(t, o.toClient); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("client got correlation ids %v; want [1 2 3]", got)
	}
	if o.closed != "" {
		t.Fatalf("closed: %s", o.closed)
	}
	// With nothing in flight a deny is answered at once.
	o.toClient = nil
	s.OnData(false, false, [][]byte{produceReq(4, "ok", 1)})
	if got := corrs(t, o.toClient); len(got) != 1 || got[0] != 4 {
		t.Fatalf("client got %v; want [4]", got)
	}
	var verdicts []flow.Verdict
	for _, r := range sink.recs {
		verdicts = append(verdicts, r.Verdict)
		if r.Kafka == nil || r.Proto != "kafka" || r.Source.Identity != 100 || r.Direction != flow.Ingress {
			t.Errorf("record %+v lacks kafka details", r)
		}
	}
	want := []flow.Verdict{flow.Allowed, flow.Denied, flow.Denied, flow.Denied}
	if len(verdicts) != len(want) {
		t.Fatalf("verdicts %v; want %v", verdicts, want)
	}
	if sink.recs[1].Kafka.ErrorCode != 29 || sink.recs[1].Kafka.Topics[0] != "ok" || sink.recs[1].Kafka.APIKeyName != "Produce" {
		t.Errorf("deny record = %+v", sink.recs[1].Kafka)
	}
}

func cat2(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestParserAcks0(t *testing.T) {
	s, o, _ := newConn(t, staticRules(t, policy.PortRuleKafka{Role: "consume", Topic: "ok"}))
	s.OnData(false, false, [][]byte{produceReq(1, "ok", 0)})
	if o.closed == "" || len(o.toServer) != 0 || len(o.toClient) != 0 {
		t.Fatalf("denied acks=0 produce: closed %q, server %d bytes, client %d bytes; want closed, nothing sent", o.closed, len(o.toServer), len(o.toClient))
	}
	// With a request in flight, its response is delivered first.
	s, o, _ = newConn(t, staticRules(t, policy.PortRuleKafka{Role: "consume", Topic: "ok"}))
	s.OnData(false, false, [][]byte{cat2(fetchReq(1, "ok"), produceReq(2, "ok", 0), fetchReq(3, "ok"))})
	if o.closed != "" || !bytes.Equal(o.toServer, fetchReq(1, "ok")) {
		t.Fatalf("closed %q, server %d bytes", o.closed, len(o.toServer))
	}
	s.OnData(true, false, [][]byte{brokerResp(1, "x")})
	if got := corrs(t, o.toClient); len(got) != 1 || got[0] != 1 || o.closed == "" {
		t.Fatalf("client got %v, closed %q; want [1], closed", got, o.closed)
	}
	// An allowed acks=0 produce expects no response.
	s, o, _ = newConn(t, staticRules(t, policy.PortRuleKafka{Role: "produce", Topic: "ok"}))
	s.OnData(false, false, [][]byte{cat2(produceReq(1, "ok", 0), produceReq(2, "ok", 1))})
	s.OnData(true, false, [][]byte{brokerResp(2, "x")})
	if o.closed != "" || len(corrs(t, o.toClient)) != 1 {
		t.Fatalf("closed %q, client %v", o.closed, corrs(t, o.toClient))
	}
}

func metadataResp(corr int32, name string, id TopicID) []byte {
	r := kmsg.NewPtrMetadataResponse()
	r.SetVersion(12)
	tp := kmsg.NewMetadataResponseTopic()
	tp.Topic = kmsg.StringPtr(name)
	tp.TopicID = id
	r.Topics = append(r.Topics, tp)
	b := binary.BigEndian.AppendUint32(nil, uint32(corr))
	b = append(b, 0) // response header v1 tagged fields
	b = r.AppendTo(b)
	return sizePrefixed(b)
}

func metadataReq(corr int32, name string) []byte {
	r := kmsg.NewPtrMetadataRequest()
	r.SetVersion(12)
	tp := kmsg.NewMetadataRequestTopic()
	tp.Topic = kmsg.StringPtr(name)
	r.Topics = append(r.Topics, tp)
	return sizePrefixed(frame(r, corr, "cli"))
}

func fetchByID(corr int32, id TopicID) []byte {
	r := kmsg.NewPtrFetchRequest()
	r.SetVersion(13)
	tp := kmsg.NewFetchRequestTopic()
	tp.TopicID = id
	tp.Partitions = append(tp.Partitions, kmsg.NewFetchRequestTopicPartition())
	r.Topics = append(r.Topics, tp)
	return sizePrefixed(frame(r, corr, "cli"))
}

func TestParserTopicIDs(t *testing.T) {
	idOK, idSecret := TopicID{1}, TopicID{2}
	rs := staticRules(t, policy.PortRuleKafka{Role: "consume", Topic: "ok"})
	f := NewParserFactory(rs, nil)
	info := &proxylib.ConnInfo{Ingress: true, DstAddr: "10.0.0.2:9092", DstPort: 9092}
	o := &out{}
	s := proxylib.NewStream(f, o, info)
	// Before any metadata, an ID is unknown: denied.
	s.OnData(false, false, [][]byte{fetchByID(1, idOK)})
	if len(o.toServer) != 0 || len(corrs(t, o.toClient)) != 1 {
		t.Fatalf("fetch by unknown topic id was not denied: closed %q server %d client %v", o.closed, len(o.toServer), corrs(t, o.toClient))
	}
	s.OnData(false, false, [][]byte{metadataReq(2, "ok")})
	resp := metadataResp(2, "ok", idOK)
	// The metadata response arrives in two pieces.
	s.OnData(true, false, [][]byte{resp[:10]})
	s.OnData(true, false, [][]byte{resp[10:]})
	o.toServer = nil
	s.OnData(false, false, [][]byte{fetchByID(3, idOK)})
	if !bytes.Equal(o.toServer, fetchByID(3, idOK)) {
		t.Fatal("fetch by a learnt topic id was not passed")
	}
	// A second connection to the same broker knows the ID too.
	o2 := &out{}
	s2 := proxylib.NewStream(f, o2, info)
	s2.OnData(false, false, [][]byte{fetchByID(1, idOK)})
	if len(o2.toServer) == 0 {
		t.Fatal("second connection did not resolve the topic id")
	}
	// A secret topic's ID, even once learnt, maps to a denied name.
	s2.OnData(true, false, [][]byte{brokerResp(1, "")})
	s2.OnData(false, false, [][]byte{metadataReq(2, "ok")})
	s2.OnData(true, false, [][]byte{metadataResp(2, "secret", idSecret)})
	o2.toServer = nil
	s2.OnData(false, false, [][]byte{fetchByID(3, idSecret)})
	if len(o2.toServer) != 0 {
		t.Fatal("fetch of a denied topic by id was passed")
	}
}

func TestParserFailClosed(t *testing.T) {
	tests := []struct {
		name  string
		rules RuleSource
		in    []byte
		reply []byte
	}{
		{name: "garbage", in: []byte("GET / HTTP/1.1\r\n\r\n")},
		{name: "huge frame", in: []byte{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0}},
		{name: "negative frame", in: []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}},
		{name: "short frame", in: []byte{0, 0, 0, 2, 0, 0}},
		{name: "unknown key", in: sizePrefixed([]byte{0x7f, 0, 0, 0, 0, 0, 0, 1, 0, 0})},
		{name: "unsolicited response", reply: brokerResp(1, "x")},
		{name: "policy gone", rules: RuleSourceFunc(func(bool, uint16, uint32) (*Matcher, bool) { return nil, false }), in: fetchReq(1, "ok")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := tt.rules
			if rs == nil {
				rs = staticRules(t)
			}
			s, o, sink := newConn(t, rs)
			if tt.in != nil {
				s.OnData(false, false, [][]byte{tt.in})
			}
			if tt.reply != nil {
				s.OnData(true, false, [][]byte{tt.reply})
			}
			if o.closed == "" || len(o.toServer) != 0 {
				t.Fatalf("closed %q, server got %d bytes; want closed and nothing forwarded", o.closed, len(o.toServer))
			}
			if len(sink.recs) == 0 || sink.recs[len(sink.recs)-1].Verdict == flow.Allowed {
				t.Errorf("no error record: %+v", sink.recs)
			}
		})
	}
}

func FuzzParser(f *testing.F) {
	f.Add(cat2(fetchReq(1, "ok"), produceReq(2, "no", 1)), brokerResp(1, "x"))
	f.Add(metadataReq(1, "ok"), metadataResp(1, "ok", TopicID{1}))
	for _, b := range realClientFrames(f) {
		f.Add(b, brokerResp(1, ""))
	}
	m, _ := Compile([]policy.PortRuleKafka{{Role: "consume", Topic: "ok"}})
	rs := RuleSourceFunc(func(bool, uint16, uint32) (*Matcher, bool) { return m, true })
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		o := &out{}
		s := proxylib.NewStream(NewParserFactory(rs, nil), o, &proxylib.ConnInfo{})
		half := len(req) / 2
		s.OnData(false, false, [][]byte{req[:half], req[half:]})
		s.OnData(true, false, [][]byte{resp})
		// Whatever reached the server must be whole requests the rules allow.
		b := o.toServer
		for len(b) > 0 {
			n := int(binary.BigEndian.Uint32(b))
			var dc decoder
			d, err := dc.decodeRequest(b[4 : 4+n])
			if err != nil || !m.Allow(&d.Request) {
				t.Fatalf("forwarded a request the rules do not allow: %v %+v", err, d)
			}
			b = b[4+n:]
		}
	})
}

func BenchmarkParserProduce(b *testing.B) {
	m, _ := Compile([]policy.PortRuleKafka{{Role: "produce", Topic: "t"}})
	rs := RuleSourceFunc(func(bool, uint16, uint32) (*Matcher, bool) { return m, true })
	req := produceReq(1, "t", 1)
	resp := brokerResp(1, "ok")
	s := proxylib.NewStream(NewParserFactory(rs, nil), discard{}, &proxylib.ConnInfo{DstAddr: "x:1"})
	b.ReportAllocs()
	for b.Loop() {
		s.OnData(false, false, [][]byte{req})
		s.OnData(true, false, [][]byte{resp})
	}
}

type discard struct{}

func (discard) Forward(bool, []byte) {}
func (discard) End(bool)             {}
func (discard) Close(string)         {}

func TestParserMetadataDenyProbe(t *testing.T) {
	s, o, sink := newConn(t, staticRules(t, policy.PortRuleKafka{Role: "consume", Topic: "ok"}))
	s.OnData(false, false, [][]byte{metadataReq(5, "secret")})
	// The broker gets a probe: the same request without topics.
	var dc decoder
	n := int(binary.BigEndian.Uint32(o.toServer))
	d, err := dc.decodeRequest(o.toServer[4 : 4+n])
	if err != nil || d.APIKey != keyMetadata || d.Correlation != 5 || len(d.Topics) != 0 || d.AllTopics {
		t.Fatalf("server got %+v, %v; want a metadata probe without topics", d, err)
	}
	if len(o.toClient) != 0 {
		t.Fatal("answered before the probe's response")
	}
	br := kmsg.NewPtrMetadataResponse()
	br.SetVersion(12)
	b := kmsg.NewMetadataResponseBroker()
	b.NodeID, b.Host, b.Port = 1, "broker", 9092
	br.Brokers = append(br.Brokers, b)
	body := append(binary.BigEndian.AppendUint32(nil, 5), 0)
	s.OnData(true, false, [][]byte{sizePrefixed(br.AppendTo(body))})
	if o.closed != "" {
		t.Fatalf("closed: %s", o.closed)
	}
	mr := kmsg.NewPtrMetadataResponse()
	mr.SetVersion(12)
	if err := mr.ReadFrom(o.toClient[9:]); err != nil {
		t.Fatal(err)
	}
	if len(mr.Brokers) != 1 || mr.Brokers[0].Host != "broker" || len(mr.Topics) != 1 || *mr.Topics[0].Topic != "secret" || mr.Topics[0].ErrorCode != 29 {
		t.Errorf("client got brokers %+v topics %+v; want the broker and secret with error 29", mr.Brokers, mr.Topics)
	}
	if len(sink.recs) != 1 || sink.recs[0].Verdict != flow.Denied {
		t.Errorf("records %+v; want one denial", sink.recs)
	}
}

func TestParserPolicyUpdateAndNoPolicy(t *testing.T) {
	allow, _ := Compile([]policy.PortRuleKafka{{Role: "consume", Topic: "ok"}})
	deny, _ := Compile([]policy.PortRuleKafka{{Role: "consume", Topic: "other"}})
	var cur atomic.Pointer[Matcher]
	cur.Store(allow)
	rs := RuleSourceFunc(func(bool, uint16, uint32) (*Matcher, bool) { m := cur.Load(); return m, m != nil })
	s, o, _ := newConn(t, rs)
	s.OnData(false, false, [][]byte{fetchReq(1, "ok")})
	s.OnData(true, false, [][]byte{brokerResp(1, "x")})
	// A policy update applies to the open connection from its next request;
	// a connection that fetched (v7+: maybe a fetch session, KIP-227) is
	// restarted so its session cannot keep serving revoked topics.
	cur.Store(deny)
	o.toServer = nil
	s.OnData(false, false, [][]byte{fetchReq(2, "ok")})
	if len(o.toServer) != 0 || o.closed == "" {
		t.Fatalf("after the update: server got %d bytes, closed %q; want the connection closed", len(o.toServer), o.closed)
	}
	// Without fetches, the next request is decided by the new rules.
	cur.Store(allow)
	s, o, _ = newConn(t, rs)
	s.OnData(false, false, [][]byte{metadataReq(1, "ok")})
	s.OnData(true, false, [][]byte{metadataResp(1, "ok", TopicID{9})})
	cur.Store(deny)
	o.toServer = nil
	s.OnData(false, false, [][]byte{produceReq(2, "ok", 1)})
	if len(o.toServer) != 0 || o.closed != "" || len(corrs(t, o.toClient)) != 2 {
		t.Fatalf("after the update: server got %d bytes, closed %q, client %v; want a deny response", len(o.toServer), o.closed, corrs(t, o.toClient))
	}
	// No policy for a new connection: it is closed at once.
	cur.Store(nil)
	_, o2, sink := newConn(t, rs)
	if o2.closed == "" || len(sink.recs) != 1 || sink.recs[0].Verdict != flow.Denied {
		t.Fatalf("connection without policy: closed %q, records %+v; want closed with a denial record", o2.closed, sink.recs)
	}
}

func TestParserMaxFrame(t *testing.T) {
	f := NewParserFactory(staticRules(t), nil)
	f.MaxFrame = 16
	o := &out{}
	s := proxylib.NewStream(f, o, &proxylib.ConnInfo{})
	s.OnData(false, false, [][]byte{produceReq(1, "ok", 1)[:10]}) // a frame of about 40 bytes
	if o.closed == "" {
		t.Fatal("a frame over MaxFrame did not close the connection")
	}
}

// TestParserPipelinedBadFrame checks that a valid request's answer is
// delivered when a bad frame follows it in the same read: the broker
// answers the first, then the connection closes, as a broker does.
func TestParserPipelinedBadFrame(t *testing.T) {
	tests := []struct {
		name string
		bad  []byte
	}{
		{name: "malformed", bad: sizePrefixed([]byte{0x7f, 0, 0, 0, 0, 0, 0, 1, 0, 0})},
		{name: "short frame", bad: []byte{0, 0, 0, 2, 0, 0}},
		{name: "too large", bad: []byte{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0}},
		{name: "garbage", bad: []byte("GET / HTTP/1.1\r\n\r\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, o, _ := newConn(t, staticRules(t, policy.PortRuleKafka{Role: "consume", Topic: "ok"}))
			s.OnData(false, false, [][]byte{cat2(fetchReq(1, "ok"), produceReq(2, "ok", 1), tt.bad, fetchReq(3, "ok"))})
			if !bytes.Equal(o.toServer, fetchReq(1, "ok")) || o.closed != "" {
				t.Fatalf("server got %d bytes, closed %q; want the first fetch only, still open", len(o.toServer), o.closed)
			}
			s.OnData(false, false, [][]byte{fetchReq(4, "ok")}) // after the bad frame: dropped
			s.OnData(true, false, [][]byte{brokerResp(1, "fetched")})
			if got := corrs(t, o.toClient); len(got) != 2 || got[0] != 1 || got[1] != 2 {
				t.Errorf("client got correlation ids %v; want [1 2] (the answer, then the queued deny)", got)
			}
			if o.closed == "" || !bytes.Equal(o.toServer, fetchReq(1, "ok")) {
				t.Errorf("closed %q, server got %d bytes; want closed after the answers, nothing more forwarded", o.closed, len(o.toServer))
			}
		})
	}
}

// TestParserPolicyUpdateSameRules checks that a policy update that leaves a
// connection's rules as they were (recompiled: another *Matcher) does not
// restart its fetch session; a real change does.
func TestParserPolicyUpdateSameRules(t *testing.T) {
	compile := func(topic string) *Matcher {
		m, err := Compile([]policy.PortRuleKafka{{Role: "consume", Topic: topic}, {APIKey: "metadata"}})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	var cur atomic.Pointer[Matcher]
	cur.Store(compile("ok"))
	rs := RuleSourceFunc(func(bool, uint16, uint32) (*Matcher, bool) { return cur.Load(), true })
	s, o, _ := newConn(t, rs)
	s.OnData(false, false, [][]byte{fetchReq(1, "ok")})
	s.OnData(true, false, [][]byte{brokerResp(1, "x")})
	cur.Store(compile("ok")) // an unrelated policy update: same rules, new matcher
	s.OnData(false, false, [][]byte{fetchReq(2, "ok")})
	if o.closed != "" || !bytes.Equal(o.toServer, cat2(fetchReq(1, "ok"), fetchReq(2, "ok"))) {
		t.Fatalf("after an update with the same rules: closed %q, server got %d bytes; want open, both fetches", o.closed, len(o.toServer))
	}
	cur.Store(compile("other"))
	s.OnData(false, false, [][]byte{fetchReq(3, "ok")})
	if o.closed == "" {
		t.Fatal("after a real rule change the fetch session's connection is still open")
	}
	// At once, with fetch 2 still in flight: its answer could carry a
	// revoked partition's records.
	s.OnData(true, false, [][]byte{brokerResp(2, "x")})
	if got := corrs(t, o.toClient); len(got) != 1 {
		t.Errorf("client got answers %v after the rules changed; want only [1]", got)
	}
}

func TestMatcherEqual(t *testing.T) {
	rs := []policy.PortRuleKafka{{Role: "produce", Topic: "a"}, {APIKey: "metadata", APIVersion: "12"}, {ClientID: "c"}}
	a, _ := Compile(rs)
	b, _ := Compile(rs)
	if !a.Equal(b) {
		t.Error("two compilations of the same rules differ")
	}
	for i, other := range [][]policy.PortRuleKafka{
		{{Role: "produce", Topic: "b"}, {APIKey: "metadata", APIVersion: "12"}, {ClientID: "c"}},
		{{Role: "consume", Topic: "a"}, {APIKey: "metadata", APIVersion: "12"}, {ClientID: "c"}},
		{{Role: "produce", Topic: "a"}, {APIKey: "metadata", APIVersion: "11"}, {ClientID: "c"}},
		{{Role: "produce", Topic: "a"}, {APIKey: "metadata", APIVersion: "12"}, {ClientID: "d"}},
		{{Role: "produce", Topic: "a"}, {APIKey: "metadata", APIVersion: "12"}},
		nil,
	} {
		o, _ := Compile(other)
		if a.Equal(o) || o.Equal(a) {
			t.Errorf("rules %d compare equal to different rules", i)
		}
	}
}

// TestParserFrameBounds checks the default max frame, that responses the
// parser need not read are streamed whatever their size, and that a large
// frame's copy is not kept.
func TestParserFrameBounds(t *testing.T) {
	s, o, _ := newConn(t, staticRules(t))
	big := binary.BigEndian.AppendUint32(nil, DefaultMaxFrame+1)
	big = append(big, 0, byte(keyFetch))
	s.OnData(false, false, [][]byte{cat2(big, make([]byte, 100))})
	if o.closed == "" || len(o.toServer) != 0 {
		t.Fatalf("request over DefaultMaxFrame: closed %q, server got %d bytes; want closed, nothing sent", o.closed, len(o.toServer))
	}

	// A fetch answer larger than the max frame is streamed through.
	f := NewParserFactory(staticRules(t), nil)
	f.MaxFrame = 1 << 10
	o = &out{}
	s = proxylib.NewStream(f, o, &proxylib.ConnInfo{DstAddr: "x:1"})
	s.OnData(false, false, [][]byte{fetchReq(7, "t")})
	resp := brokerResp(7, string(make([]byte, 64<<10)))
	for b := resp; len(b) > 0; {
		k := min(len(b), 1000)
		s.OnData(true, false, [][]byte{b[:k]})
		b = b[k:]
	}
	if o.closed != "" || !bytes.Equal(o.toClient, resp) {
		t.Fatalf("large fetch response: closed %q, client got %d of %d bytes", o.closed, len(o.toClient), len(resp))
	}

	// A frame whole in several chunks of one read is copied, then let go.
	f = NewParserFactory(staticRules(t), nil)
	p := f.Create(&fakeConn{info: &proxylib.ConnInfo{DstAddr: "x:1"}}).(*parser)
	large := produceLarge(t, 1<<20)
	chunks := [][]byte{large[:len(large)/2], large[len(large)/2:]}
	if op, n := p.OnData(false, false, chunks); op != proxylib.Pass || n != len(large) {
		t.Fatalf("OnData = %v, %d; want Pass, %d", op, n, len(large))
	}
	if cap(p.scratch) > scratchKeep {
		t.Errorf("parser keeps a %d-byte scratch buffer after a large frame; want at most %d", cap(p.scratch), scratchKeep)
	}
}

type fakeConn struct{ info *proxylib.ConnInfo }

func (c *fakeConn) Inject(bool, []byte)      {}
func (c *fakeConn) Info() *proxylib.ConnInfo { return c.info }
func (c *fakeConn) CloseAfter(reason string) {}

// TestParserStreamsLargeProduce checks an allowed Produce naming one topic
// is passed through as it arrives, beyond the max frame, holding only its
// beginning; a denied one or one naming several topics is held whole
// (within the max frame) or refused.
func TestParserStreamsLargeProduce(t *testing.T) {
	const size = 3 << 20
	tests := []struct {
		name     string
		req      []byte
		rules    []policy.PortRuleKafka
		streamed bool
	}{
		{name: "allowed one topic", req: produceLarge(t, size, "t"), rules: []policy.PortRuleKafka{{Role: "produce", Topic: "t"}}, streamed: true},
		{name: "denied one topic", req: produceLarge(t, size, "t"), rules: []policy.PortRuleKafka{{Role: "produce", Topic: "other"}}},
		{name: "two topics", req: produceLarge(t, size, "t", "u"), rules: []policy.PortRuleKafka{{Role: "produce", Topic: "t"}, {Role: "produce", Topic: "u"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewParserFactory(staticRules(t, tt.rules...), nil)
			f.MaxFrame = 1 << 20 // below the request
			o := &out{}
			s := proxylib.NewStream(f, o, &proxylib.ConnInfo{DstAddr: "x:1"})
			var b proxylib.Budget
			s.Budget = &b
			peak := int64(0)
			for r := tt.req; len(r) > 0 && o.closed == ""; {
				k := min(len(r), 16<<10)
				s.OnData(false, false, [][]byte{r[:k]})
				peak = max(peak, b.Used())
				r = r[k:]
			}
			if !tt.streamed {
				if o.closed == "" || len(o.toServer) != 0 {
					t.Fatalf("closed %q, server got %d bytes; want closed (over the max frame), nothing sent", o.closed, len(o.toServer))
				}
				return
			}
			if o.closed != "" || !bytes.Equal(o.toServer, tt.req) {
				t.Fatalf("closed %q, server got %d of %d bytes; want the request streamed through", o.closed, len(o.toServer), len(tt.req))
			}
			if peak > 2*streamAbove {
				t.Errorf("held up to %d bytes of a streamed %d-byte request; want at most %d", peak, len(tt.req), 2*streamAbove)
			}
			// The answer is matched to it; the next request is parsed.
			s.OnData(true, false, [][]byte{brokerResp(1, "ok")})
			s.OnData(false, false, [][]byte{produceReq(2, "t", 1)})
			if got := corrs(t, o.toClient); o.closed != "" || len(got) != 1 || got[0] != 1 || !bytes.HasSuffix(o.toServer, produceReq(2, "t", 1)) {
				t.Errorf("after the streamed request: closed %q, client got %v; want open, [1], the next request passed", o.closed, got)
			}
		})
	}
}

// produceLarge is a Produce request of about size bytes of records.
func produceLarge(t *testing.T, size int, topics ...string) []byte {
	t.Helper()
	if len(topics) == 0 {
		topics = []string{"t"}
	}
	r := kmsg.NewPtrProduceRequest()
	r.SetVersion(9)
	r.Acks = 1
	for _, n := range topics {
		tp := kmsg.NewProduceRequestTopic()
		tp.Topic = n
		p := kmsg.NewProduceRequestTopicPartition()
		p.Records = make([]byte, size/len(topics))
		tp.Partitions = append(tp.Partitions, p)
		r.Topics = append(r.Topics, tp)
	}
	return sizePrefixed(frame(r, 1, "cli"))
}
