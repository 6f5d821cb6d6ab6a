package kafka

import (
	"encoding/binary"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/proxylib"
)

// RuleSource gives the Kafka rules that apply to a connection. remote is
// the identity of the peer the policy is about: the source for an ingress
// policy, the destination for an egress one. ok is false when no policy
// covers the connection; the parser then closes it (fail closed).
// Implementations must be safe for concurrent use and cheap: the parser
// asks once per request, so a policy update applies to open connections
// from their next request on; it must return the same *Matcher until the
// policy changes (a connection that may hold a Kafka fetch session is
// closed when its rules change). Matchers are compared by content
// (Matcher.Equal), so a source may recompile unchanged rules.
type RuleSource interface {
	Rules(ingress bool, port uint16, remote uint32) (m *Matcher, ok bool)
}

// Auditor is implemented by a RuleSource whose endpoint may be in policy
// audit mode (Cilium's PolicyAuditMode): a request the rules deny is then
// passed to the broker and recorded as flow.Audited instead of answered
// with an authorization error. It is asked only for a request that would
// be denied.
type Auditor interface {
	Audit() bool
}

// RuleSourceFunc adapts a function to RuleSource.
type RuleSourceFunc func(ingress bool, port uint16, remote uint32) (*Matcher, bool)

// Rules calls f.
func (f RuleSourceFunc) Rules(ingress bool, port uint16, remote uint32) (*Matcher, bool) {
	return f(ingress, port, remote)
}

// maxPending bounds the requests a connection may have in flight (sent and
// not yet answered). Kafka brokers read one request per connection at a
// time; clients keep a handful in flight.
const maxPending = 1024

// Factory creates Kafka parsers; it implements proxylib.ParserFactory.
type Factory struct {
	// MaxFrame bounds the frames the parser must hold whole (without the
	// 4-byte size prefix): every request, and the responses it reads
	// (Metadata, CreateTopics, DescribeTopicPartitions for topic IDs).
	// A larger request closes the connection, as a broker does with a
	// request over its socket.request.max.bytes; earlier requests are
	// answered first. A larger response it would read is passed on
	// unread. Other responses (Fetch) are streamed through whatever their
	// size. Zero means DefaultMaxFrame; at most MaxFrameSize. Set before
	// use.
	MaxFrame int

	rules RuleSource
	sink  flow.Sink // nil: records are not built
	now   func() time.Time

	mu  sync.Mutex
	ids map[string]*topicIDs // learnt topic IDs per destination (broker address)
}

var _ proxylib.ParserFactory = (*Factory)(nil)

// NewParserFactory returns the factory of Kafka parsers enforcing the rules
// rules gives, emitting one flow record per request decision (and per
// stream error) to sink (no records when nil).
func NewParserFactory(rules RuleSource, sink flow.Sink) *Factory {
	return &Factory{rules: rules, sink: sink, now: time.Now, ids: map[string]*topicIDs{}}
}

// topicIDs is the topic ID to name map learnt from the responses of one
// broker (Metadata, CreateTopics, DescribeTopicPartitions). It is shared by
// the connections to that broker: a client may learn an ID on one
// connection (the bootstrap one) and use it on another.
type topicIDs struct {
	mu sync.RWMutex
	m  map[TopicID]string
}

// Bounds on what the factory learns: topic IDs per broker, and brokers.
const (
	maxTopicIDs     = 1 << 20
	maxDestinations = 1 << 12
)

func (t *topicIDs) lookup(id TopicID) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n, ok := t.m[id]
	return n, ok
}

func (t *topicIDs) learn(entries []topicEntry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range entries {
		if e.name == "" || e.id == (TopicID{}) {
			continue
		}
		if len(t.m) >= maxTopicIDs {
			clear(t.m)
		}
		t.m[e.id] = e.name
	}
}

// DefaultMaxFrame is the default Factory.MaxFrame: 4 MiB, four times the
// largest request a client sends with Kafka's defaults (max.request.size
// 1 MiB, matching the broker's message.max.bytes of 1 MiB + 12), so
// producers that raised it a little still pass, while one connection
// cannot make ward hold more than 4 MiB of a frame. The broker's own
// bound, socket.request.max.bytes, is 100 MiB (MaxFrameSize); a cluster
// that allows larger requests configures ward's max_frame to match.
const DefaultMaxFrame = 4 << 20

// scratchKeep bounds the scratch buffer a parser keeps between frames.
const scratchKeep = 128 << 10

func (f *Factory) maxFrame() int {
	switch {
	case f.MaxFrame <= 0:
		return DefaultMaxFrame
	case f.MaxFrame > MaxFrameSize:
		return MaxFrameSize
	}
	return f.MaxFrame
}

func (f *Factory) idsFor(dst string) *topicIDs {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.ids[dst]
	if t == nil {
		if len(f.ids) >= maxDestinations {
			clear(f.ids) // open connections keep their maps; new ones relearn
		}
		t = &topicIDs{m: map[TopicID]string{}}
		f.ids[dst] = t
	}
	return t
}

// Create implements proxylib.ParserFactory. It returns nil (close the
// connection) when no Kafka policy covers the connection.
func (f *Factory) Create(conn proxylib.Connection) proxylib.Parser {
	info := conn.Info()
	p := &parser{f: f, conn: conn, info: info, remote: info.SrcIdentity}
	if !info.Ingress {
		p.remote = info.DstIdentity
	}
	p.src = endpoint(info.SrcIdentity, info.SrcAddr)
	p.dst = endpoint(info.DstIdentity, info.DstAddr)
	if _, ok := f.rules.Rules(info.Ingress, info.DstPort, p.remote); !ok && !p.audit() {
		p.record(flow.Denied, "no kafka policy for the connection", nil, 0)
		return nil
	}
	p.ids = f.idsFor(info.DstAddr)
	p.req.ids = p.ids.lookup
	p.closer, _ = conn.(interface{ CloseAfter(reason string) })
	return p
}

func endpoint(id uint32, addr string) flow.Endpoint {
	e := flow.Endpoint{Identity: id}
	host, port, err := net.SplitHostPort(addr)
	if err == nil {
		e.IP = host
		if p, err := strconv.ParseUint(port, 10, 16); err == nil {
			e.Port = uint16(p)
		}
	}
	return e
}

// inflight is a request sent to the broker (deny == nil) or answered by
// ward (deny holds the response), in request order.
type inflight struct {
	corr    int32
	key     int16
	version int16
	deny    []byte
	// probe is the denied Metadata request whose probe this entry awaits
	// (see metadataProbe).
	probe *decoded
}

type parser struct {
	f        *Factory
	conn     proxylib.Connection
	closer   interface{ CloseAfter(reason string) }
	info     *proxylib.ConnInfo
	remote   uint32
	src, dst flow.Endpoint
	ids      *topicIDs

	req, resp decoder
	pending   []inflight
	// rules is the rule set the last request was decided by; fetchSession
	// is set once the client used Fetch v7+ (which may open a session).
	rules        *Matcher
	fetchSession bool
	scratch      []byte
	// closing is why the connection closes once the responses still due
	// have been delivered (a request it cannot serve, a denied acks=0
	// produce); meanwhile every later request byte is dropped.
	closing string
}

// peekFrame returns the size of the frame at the head of data, and the
// frame (size prefix excluded) when all of it is there and it is at most
// the max frame. A frame spanning slices is copied into the parser's
// scratch buffer (the Stream hands a frame it had to wait for as one
// slice, so this is only a frame that arrived whole in several chunks).
func (p *parser) peekFrame(data [][]byte) (size, avail int, frame []byte, ok bool) {
	for _, b := range data {
		avail += len(b)
	}
	if avail < 4 {
		return 0, avail, nil, false
	}
	var h [4]byte
	n := 0
	for _, b := range data {
		n += copy(h[n:], b)
		if n == 4 {
			break
		}
	}
	size = int(int32(binary.BigEndian.Uint32(h[:])))
	if size < 0 || size > p.f.maxFrame() || avail < 4+size {
		return size, avail, nil, true
	}
	if len(data[0]) >= 4+size {
		return size, avail, data[0][4 : 4+size], true
	}
	return size, avail, p.gather(data, 4+size)[4:], true
}

// OnData implements proxylib.Parser.
func (p *parser) OnData(reply, endStream bool, data [][]byte) (proxylib.Op, int) {
	size, avail, frame, ok := p.peekFrame(data)
	if !reply && p.closing != "" {
		return proxylib.Drop, avail
	}
	if !ok {
		return proxylib.More, 4 - avail
	}
	if reply {
		if size < 4 { // a response header: correlation id
			p.record(flow.Error, "invalid response frame size "+strconv.Itoa(size), nil, 0)
			return proxylib.Error, proxylib.ErrInvalidFrame
		}
		return p.onResponse(size, avail, frame, data)
	}
	switch {
	case size < 8: // a request header: key, version, correlation id
		p.record(flow.Error, "invalid request frame size "+strconv.Itoa(size), nil, 0)
		return p.fail("kafka: invalid request frame size", proxylib.ErrInvalidFrame, avail)
	case frame != nil:
		return p.onRequest(size, avail, frame)
	case size > streamAbove && size <= MaxFrameSize:
		if op, n, ok := p.streamProduce(size, avail, data); ok {
			return op, n
		}
	}
	if size > p.f.maxFrame() {
		p.record(flow.Error, "request frame of "+strconv.Itoa(size)+" bytes is over the max frame of "+strconv.Itoa(p.f.maxFrame()), nil, 0)
		return p.fail("kafka: request frame too large", proxylib.ErrFrameTooLarge, avail)
	}
	return proxylib.More, 4 + size - avail
}

// streamAbove is the request size above which an allowed Produce naming
// one topic is streamed through rather than held whole; its first
// streamAbove bytes are enough to decide it (the header, a transactional
// id and the topic come before the record batches).
const streamAbove = 64 << 10

// streamProduce decides a large Produce request from its beginning, before
// its record batches have arrived, when that beginning already holds every
// topic the request names (it declares one): allowed, the request is
// passed through as it arrives (Pass beyond the bytes at hand), so its
// records are never held, whatever their size up to MaxFrameSize. ok is
// false when the request is not such a Produce, or is not allowed (a deny
// answers every partition, so it needs the whole request, within the max
// frame); it may ask for the first bytes first (More).
func (p *parser) streamProduce(size, avail int, data [][]byte) (op proxylib.Op, n int, ok bool) {
	if avail < 6 {
		return proxylib.More, 6 - avail, true // the API key
	}
	if key := p.gather(data, 6)[4:6]; int16(binary.BigEndian.Uint16(key)) != keyProduce {
		return 0, 0, false
	}
	want := 4 + streamAbove
	if avail < want {
		return proxylib.More, want - avail, true
	}
	d, ok := p.req.decodePrefix(p.gather(data, want)[4:])
	if !ok || d.APIKey != keyProduce || d.topicCount != 1 || len(d.entries) != 1 || d.entries[0].name == "" {
		return 0, 0, false
	}
	m, ok := p.f.rules.Rules(p.info.Ingress, p.info.DstPort, p.remote)
	if !ok || !m.Allow(&d.Request) {
		return 0, 0, false
	}
	op, n = p.decide(d, size, avail)
	return op, n, true
}

// gather returns the first n bytes of data (n <= the bytes there) in one
// slice, copying them when they span slices: into the scratch buffer up
// to scratchKeep bytes, else into a buffer of their own that is not kept
// (a large frame's copy is not pinned by the connection).
func (p *parser) gather(data [][]byte, n int) []byte {
	if len(data[0]) >= n {
		return data[0][:n]
	}
	buf := p.scratch[:0]
	if n > scratchKeep {
		buf = make([]byte, 0, n)
	}
	for _, b := range data {
		buf = append(buf, b[:min(len(b), n-len(buf))]...)
		if len(buf) == n {
			break
		}
	}
	if n <= scratchKeep {
		p.scratch = buf
	}
	return buf
}

// fail ends the connection on a request it cannot serve. Requests already
// sent to the broker are answered first, as a broker answers the requests
// it read before a bad one: the connection closes once their responses
// (and the deny responses queued behind them) are delivered, and every
// later request byte is dropped (avail: the bytes at hand).
func (p *parser) fail(reason string, code, avail int) (proxylib.Op, int) {
	if len(p.pending) == 0 || p.closer == nil {
		return proxylib.Error, code
	}
	p.closing = reason
	return proxylib.Drop, avail
}

func (p *parser) onRequest(size, avail int, frame []byte) (proxylib.Op, int) {
	d, err := p.req.decodeRequest(frame)
	if err != nil {
		p.record(flow.Error, "kafka request: "+err.Error(), nil, 0)
		return p.fail("kafka: malformed request", proxylib.ErrInvalidFrame, avail)
	}
	return p.decide(d, size, avail)
}

// decide applies the rules to the decoded request of a frame of size
// bytes (avail: the bytes at hand) and returns the operation on it.
func (p *parser) decide(d *decoded, size, avail int) (proxylib.Op, int) {
	m, ok := p.f.rules.Rules(p.info.Ingress, p.info.DstPort, p.remote)
	if !ok && p.audit() {
		p.record(flow.Audited, "no kafka policy for the connection", d, 0)
		return p.pass(d, size)
	}
	if !ok {
		// The policy is gone: nothing more reaches the client, not even
		// the answers in flight (unlike a bad frame, which the broker
		// would have answered up to).
		p.record(flow.Denied, "no kafka policy for the connection", d, 0)
		return proxylib.Error, proxylib.ErrPolicyDenied
	}
	if m != p.rules {
		if p.fetchSession && p.rules != nil && !m.Equal(p.rules) {
			// A fetch session (KIP-227, Fetch v7+) keeps returning data
			// for the partitions it holds without naming them again, so a
			// policy change could not take them away: restart the
			// connection, and with it the session; the client's next full
			// fetch names every topic again.
			// At once: a fetch in flight could still return a revoked
			// partition's records.
			p.record(flow.Denied, "policy changed: restarting the connection's fetch session", d, 0)
			return proxylib.Error, proxylib.ErrPolicyDenied
		}
		p.rules = m
	}
	if d.APIKey == keyFetch && d.APIVersion >= 7 {
		p.fetchSession = true
	}
	if len(p.pending) >= maxPending {
		p.record(flow.Error, "too many requests in flight", d, 0)
		return p.fail("kafka: too many requests in flight", proxylib.ErrInvalidFrame, avail)
	}
	allowed := d.unresolved == 0 && m.Allow(&d.Request)
	noResponse := d.APIKey == keyProduce && d.acks == 0
	if allowed {
		p.record(flow.Allowed, "", d, 0)
		return p.pass(d, size)
	}
	reason := "kafka rules"
	if d.unresolved > 0 {
		reason = "unknown topic id"
	}
	if p.audit() {
		p.record(flow.Audited, reason, d, 0)
		return p.pass(d, size)
	}
	if noResponse {
		// A broker closes the connection of an acks=0 producer whose
		// request failed (KafkaApis.handleProduceRequest): the client has
		// no other way to learn. Earlier requests are answered first.
		p.record(flow.Denied, reason+"; acks=0: closing the connection", d, errTopicAuthorization)
		return p.fail("kafka: denied acks=0 produce", proxylib.ErrPolicyDenied, avail)
	}
	if d.APIKey == keyMetadata {
		if probe, err := metadataProbe(d); err == nil {
			p.record(flow.Denied, reason, d, errTopicAuthorization)
			p.conn.Inject(false, probe)
			p.pending = append(p.pending, inflight{corr: d.Correlation, key: d.APIKey, version: d.APIVersion, probe: d.clone()})
			return proxylib.Drop, 4 + size
		}
	}
	resp, err := denyResponse(d, nil)
	if err != nil {
		p.record(flow.Denied, reason+"; cannot answer: "+err.Error(), d, 0)
		return p.fail("kafka: denied request without a deny response", proxylib.ErrPolicyDenied, avail)
	}
	p.record(flow.Denied, reason, d, d.denyCode())
	if len(p.pending) == 0 {
		p.conn.Inject(true, resp)
	} else {
		p.pending = append(p.pending, inflight{corr: d.Correlation, key: d.APIKey, version: d.APIVersion, deny: resp})
	}
	return proxylib.Drop, 4 + size
}

// pass sends the request of a frame of size bytes on to the broker.
func (p *parser) pass(d *decoded, size int) (proxylib.Op, int) {
	if d.APIKey != keyProduce || d.acks != 0 {
		p.pending = append(p.pending, inflight{corr: d.Correlation, key: d.APIKey, version: d.APIVersion})
	}
	return proxylib.Pass, 4 + size
}

// audit reports whether the connection's endpoint is in policy audit mode.
func (p *parser) audit() bool {
	a, ok := p.f.rules.(Auditor)
	return ok && a.Audit()
}

// learnsIDs reports whether responses of key carry topic names with IDs.
func learnsIDs(key int16) bool {
	return key == keyMetadata || key == 19 || key == 75 // CreateTopics, DescribeTopicPartitions
}

func (p *parser) onResponse(size, avail int, frame []byte, data [][]byte) (proxylib.Op, int) {
	if avail < 8 {
		return proxylib.More, 8 - avail
	}
	if len(p.pending) == 0 {
		p.record(flow.Error, "kafka response without a request", nil, 0)
		return proxylib.Error, proxylib.ErrInvalidFrame
	}
	head := p.pending[0]
	var cb [8]byte
	n := 0
	for _, b := range data {
		n += copy(cb[n:], b)
		if n == 8 {
			break
		}
	}
	if corr := int32(binary.BigEndian.Uint32(cb[4:])); corr != head.corr {
		p.record(flow.Error, "kafka response out of order: correlation id "+strconv.Itoa(int(corr))+", want "+strconv.Itoa(int(head.corr)), nil, 0)
		return proxylib.Error, proxylib.ErrInvalidFrame
	}
	op := proxylib.Pass
	readable := size <= p.f.maxFrame() // else the frame is passed on unread
	if head.probe != nil {
		if frame == nil && readable {
			return proxylib.More, 4 + size - avail
		}
		var resp []byte
		err := ErrTooLarge
		if frame != nil {
			resp, err = spliceMetadataDeny(head.probe, frame)
		}
		if err != nil {
			if resp, err = denyResponse(head.probe, nil); err != nil {
				p.record(flow.Error, "kafka metadata deny: "+err.Error(), head.probe, 0)
				return proxylib.Error, proxylib.ErrInvalidFrame
			}
		}
		p.conn.Inject(true, resp)
		op = proxylib.Drop
	} else if learnsIDs(head.key) && readable {
		if frame == nil {
			return proxylib.More, 4 + size - avail
		}
		p.learn(head, frame)
	}
	k := 1
	for k < len(p.pending) && p.pending[k].deny != nil {
		p.conn.Inject(true, p.pending[k].deny)
		k++
	}
	p.pending = p.pending[:copy(p.pending, p.pending[k:])]
	if len(p.pending) == 0 && p.closing != "" {
		p.closer.CloseAfter(p.closing)
	}
	return op, 4 + size
}

// learn reads a response that names topics with their IDs and remembers
// the pairs. An unreadable response is passed on unlearnt: requests naming
// its IDs will then be denied.
func (p *parser) learn(head inflight, frame []byte) {
	m := responseSchema(head.key)
	if m == nil || !m.valid.has(head.version) {
		return
	}
	r := reader{b: frame}
	r.skip(4)
	flex := m.flex.has(head.version)
	if flex {
		r.taggedFields()
	}
	dc := &p.resp
	d := &dc.d
	*d = decoded{entries: d.entries[:0], parts: d.parts[:0], groups: d.groups[:0], Request: Request{APIKey: -1, Topics: d.Topics[:0]}}
	dc.cur, dc.curGrp = -1, -1
	dc.walk(&r, m.fields, head.version, flex, 0)
	if r.err != nil {
		return
	}
	p.ids.learn(d.entries)
}

func (p *parser) record(v flow.Verdict, reason string, d *decoded, code int16) {
	if p.f.sink == nil {
		return
	}
	r := &flow.Record{
		Time:        p.f.now(),
		Direction:   flow.Egress,
		Verdict:     v,
		Reason:      reason,
		Source:      p.src,
		Destination: p.dst,
		Proto:       "kafka",
	}
	if p.info.Ingress {
		r.Direction = flow.Ingress
	}
	if d != nil {
		r.Kafka = &flow.Kafka{
			APIKey:        d.APIKey,
			APIKeyName:    APIKeyName(d.APIKey),
			APIVersion:    d.APIVersion,
			CorrelationID: d.Correlation,
			ClientID:      d.ClientID,
			Topics:        append([]string(nil), d.Topics...),
			ErrorCode:     code,
		}
	}
	p.f.sink.Emit(r)
}
