package memcache

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"strconv"
	"strings"
	"time"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/proxylib"
)

// RuleSource gives the rules of a connection: remote is the identity of
// the peer the policy is about (the source for ingress, the destination
// for egress). ok false: no policy covers the connection (it is closed).
// It is asked once per request, so policy changes apply from the next one.
type RuleSource interface {
	Rules(ingress bool, port uint16, remote uint32) (m *Matcher, ok bool)
}

// Limits.
const (
	// maxLine bounds a text command line (memcached's own limit for a
	// key line is 2048 bytes).
	maxLine = 2048
	// maxPending bounds the requests in flight on one connection.
	maxPending = 4096
	// binHeader is a binary packet's header size.
	binHeader = 24
)

// Denials in each protocol's own words.
var (
	textDenied = []byte("CLIENT_ERROR access denied\r\n")
	textError  = []byte("ERROR\r\n") // an unknown command, as memcached answers it
)

// binary status "authentication error", memcached's answer to a command
// the client may not run.
const binStatusDenied = 0x0008

// Factory creates parsers; it implements proxylib.ParserFactory.
type Factory struct {
	rules RuleSource
	sink  flow.Sink // nil: no records
	now   func() time.Time
}

// NewParserFactory returns the factory of parsers enforcing what rules
// gives, recording a flow per request decision in sink (none when nil).
func NewParserFactory(rules RuleSource, sink flow.Sink) *Factory {
	return &Factory{rules: rules, sink: sink, now: time.Now}
}

// Create implements proxylib.ParserFactory.
func (f *Factory) Create(conn proxylib.Connection) proxylib.Parser {
	info := conn.Info()
	remote := info.DstIdentity
	if info.Ingress {
		remote = info.SrcIdentity
	}
	return &parser{f: f, conn: conn, info: info, remote: remote}
}

// Auditor is implemented by a RuleSource whose endpoint may be in policy
// audit mode (Cilium's PolicyAuditMode): a request the rules deny is then
// passed to the server and recorded as flow.Audited. It is asked only for
// a request that would be denied.
type Auditor interface {
	Audit() bool
}

// decide applies the rules to a well-formed request: flow.Allowed,
// flow.Audited (denied, passed in audit mode), flow.Denied, or flow.Error
// when no policy covers the connection any more.
func (p *parser) decide(cmd string, keys []string) (flow.Verdict, string) {
	m, ok := p.f.rules.Rules(p.info.Ingress, p.info.DstPort, p.remote)
	switch {
	case ok && m.Allows(cmd, keys):
		return flow.Allowed, ""
	case p.audit():
		if !ok {
			return flow.Audited, "no policy for the connection"
		}
		return flow.Audited, "access denied"
	case !ok:
		return flow.Error, "no policy for the connection"
	}
	return flow.Denied, "access denied"
}

func (p *parser) audit() bool {
	a, ok := p.f.rules.(Auditor)
	return ok && a.Audit()
}

// pending is a request the server will answer (or a denial waiting for
// the answers before it).
type pending struct {
	deny   []byte // a denial to inject when it reaches the head
	multi  bool   // text: the answer ends with END (get, stats)
	opaque uint32 // binary: the request's opaque
}

type parser struct {
	f      *Factory
	conn   proxylib.Connection
	info   *proxylib.ConnInfo
	remote uint32
	queue  []pending
	// proto is the connection's protocol, fixed by its first request's
	// first byte as memcached fixes it (0: no request yet): a later 0x80
	// on a text connection is a text line to memcached, not a binary
	// packet, and a text request on a binary connection closes it.
	proto byte
}

// Connection protocols.
const (
	protoText   = 't'
	protoBinary = 'b'
)

// OnData implements proxylib.Parser.
func (p *parser) OnData(reply, _ bool, data [][]byte) (proxylib.Op, int) {
	if reply {
		return p.onReply(data)
	}
	if avail(data) == 0 {
		return proxylib.More, 1
	}
	binaryByte := firstByte(data) == 0x80
	switch {
	case p.proto == 0 && binaryByte:
		p.proto = protoBinary
	case p.proto == 0:
		p.proto = protoText
	case p.proto == protoBinary && !binaryByte:
		// memcached closes a binary connection on a bad magic byte.
		return proxylib.Error, proxylib.ErrInvalidFrame
	}
	if p.proto == protoBinary {
		return p.onBinaryRequest(data)
	}
	return p.onTextRequest(data)
}

// --- requests ---

func (p *parser) onTextRequest(data [][]byte) (proxylib.Op, int) {
	line, n, ok := readLine(data)
	if !ok {
		if n > maxLine {
			return proxylib.Error, proxylib.ErrFrameTooLarge
		}
		return proxylib.More, 1
	}
	// memcached reads the line as a C string (strlen): it ends at a NUL.
	if i := bytes.IndexByte(line, 0); i >= 0 {
		line = line[:i]
	}
	f := tokens(line)
	if len(f) == 0 {
		return proxylib.Pass, n // an empty line: memcached answers ERROR itself
	}
	// Command names are case-sensitive to memcached (strcmp): "SET" is
	// an unknown command whose data block it reads as commands.
	cmd := f[0]
	var keys []string
	total := n // the request's bytes: the line and any data block
	multi, answered := false, true
	noreply := f[len(f)-1] == "noreply"
	known := true
	switch cmd {
	case "get", "gets":
		keys, multi = f[1:], true
	case "gat", "gats":
		if len(f) > 2 {
			keys = f[2:]
		}
		multi = true
	case "set", "add", "replace", "append", "prepend", "cas":
		want := 5
		if cmd == "cas" {
			want = 6
		}
		// memcached answers ERROR to another token count and does not
		// read the data block: its bytes are the next commands.
		if len(f) != want && len(f) != want+1 {
			return p.denyText(cmd, nil, n, textError)
		}
		// A line memcached refuses (CLIENT_ERROR) leaves the data block
		// unread too: only numbers as memcached reads them pass, and a
		// refused line is dropped alone, its data block parsed as the
		// commands memcached would take it for.
		size, ok := storageLine(f, cmd == "cas")
		if !ok {
			return p.denyText(cmd, nil, n, textBadLine)
		}
		keys, total = f[1:2], n+size+2
		answered = !noreply
	case "delete", "incr", "decr", "touch":
		if len(f) < 2 {
			return p.denyText(cmd, nil, n, textError)
		}
		keys, answered = f[1:2], !noreply
	case "flush_all", "verbosity":
		answered = !noreply
	case "version", "stats", "mn":
		multi = cmd == "stats"
	case "quit":
		answered = false
	case "mg", "md", "ma", "me", "ms":
		if len(f) < 2 {
			return p.denyText(cmd, nil, n, textError)
		}
		if len(f) > maxMetaTokens {
			// memcached refuses the line without reading an ms data
			// block: dropped alone, like a refused storage line.
			return p.denyText(cmd, nil, n, []byte("CLIENT_ERROR options flags too long\r\n"))
		}
		keys = f[1:2]
		if cmd == "ms" {
			if len(f) < 3 {
				return p.denyText(cmd, nil, n, textError)
			}
			size, ok := decimal(f[2], maxData)
			if !ok {
				// memcached: CLIENT_ERROR bad data chunk, the data block
				// unread.
				return p.denyText(cmd, nil, n, []byte("CLIENT_ERROR bad data chunk\r\n"))
			}
			total = n + int(size) + 2
		}
		for _, fl := range f[2:] {
			// memcached reads a meta flag by its token's first byte.
			switch fl[0] {
			case 'q':
				answered = false // quiet mode: maybe no answer
			case 'b':
				// The key is base64 (memcached decodes it): the rules
				// are about the key memcached uses.
				k, err := base64.StdEncoding.DecodeString(keys[0])
				if err != nil {
					return p.denyText(cmd, keys, total, []byte("CLIENT_ERROR error decoding key\r\n"))
				}
				keys = []string{string(k)}
			}
		}
	default:
		known = false
	}
	for _, k := range keys {
		if len(k) > maxKeyLength {
			return p.denyText(cmd, keys, total, []byte("CLIENT_ERROR bad command line format\r\n"))
		}
	}
	if !known {
		return p.denyText(cmd, nil, total, textError)
	}
	verdict, reason := p.decide(cmd, keys)
	switch verdict {
	case flow.Error:
		p.record(flow.Error, cmd, keys, reason)
		return proxylib.Error, proxylib.ErrPolicyDenied
	case flow.Denied:
		return p.denyText(cmd, keys, total, textDenied)
	}
	if len(p.queue) >= maxPending {
		return proxylib.Error, proxylib.ErrFrameTooLarge
	}
	if answered {
		p.queue = append(p.queue, pending{multi: multi})
	}
	p.record(verdict, cmd, keys, reason)
	return proxylib.Pass, total
}

// textBadLine is memcached's answer to a storage line it cannot read.
var textBadLine = []byte("CLIENT_ERROR bad command line format\r\n")

// maxMetaTokens bounds a meta command's tokens: memcached 1.6 refuses a
// line of more than MFLAG_MAX_OPT_LENGTH (20) tokens, its end counted, as
// "options flags too long" (no client sends that many flags).
const maxMetaTokens = 16

// maxData is the largest data block memcached reads (INT_MAX - 2).
const maxData = 1<<31 - 1 - 2

// tokens splits a text line as memcached's tokenize_command does: on
// spaces only (a tab is part of a token).
func tokens(line []byte) []string {
	var f []string
	for _, t := range bytes.Split(line, []byte{' '}) {
		if len(t) > 0 {
			f = append(f, string(t))
		}
	}
	return f
}

// decimal reads s as an unsigned decimal number no larger than max; only
// digits (memcached's strtol would also take signs and leading spaces;
// such a line is refused here, never read differently).
func decimal(s string, max uint64) (uint64, bool) {
	if s == "" || len(s) > 20 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > max {
		return 0, false
	}
	return v, true
}

// storageLine checks a storage command's tokens (set key flags exptime
// bytes [cas] [noreply]) as memcached's process_update_command reads them
// — flags a uint32, exptime an int32, bytes at most INT_MAX-2, cas a
// uint64 — and returns the data block's size.
func storageLine(f []string, cas bool) (int, bool) {
	if _, ok := decimal(f[2], 1<<32-1); !ok {
		return 0, false
	}
	if _, ok := decimal(strings.TrimPrefix(f[3], "-"), 1<<31-1); !ok {
		return 0, false
	}
	size, ok := decimal(f[4], maxData)
	if !ok {
		return 0, false
	}
	if cas {
		if _, ok := decimal(f[5], 1<<64-1); !ok {
			return 0, false
		}
	}
	return int(size), true
}

// denyText drops the request's total bytes and answers it with msg in
// its turn.
func (p *parser) denyText(cmd string, keys []string, total int, msg []byte) (proxylib.Op, int) {
	p.record(flow.Denied, cmd, keys, strings.TrimSpace(string(msg)))
	p.answer(msg)
	return proxylib.Drop, total
}

// answer injects msg now when nothing before it awaits an answer, or
// queues it after them.
func (p *parser) answer(msg []byte) {
	if len(p.queue) == 0 {
		p.conn.Inject(true, msg)
		return
	}
	p.queue = append(p.queue, pending{deny: msg})
}

// binary opcodes and their text names; quiet variants answer only on
// failure (and GetQ/GetKQ on a hit).
var binOps = map[byte]struct {
	name  string
	quiet bool
	keyed bool
}{
	0x00: {"get", false, true}, 0x09: {"get", true, true}, 0x0c: {"get", false, true}, 0x0d: {"get", true, true},
	0x01: {"set", false, true}, 0x11: {"set", true, true},
	0x02: {"add", false, true}, 0x12: {"add", true, true},
	0x03: {"replace", false, true}, 0x13: {"replace", true, true},
	0x04: {"delete", false, true}, 0x14: {"delete", true, true},
	0x05: {"incr", false, true}, 0x15: {"incr", true, true},
	0x06: {"decr", false, true}, 0x16: {"decr", true, true},
	0x07: {"quit", false, false}, 0x17: {"quit", true, false},
	0x08: {"flush_all", false, false}, 0x18: {"flush_all", true, false},
	0x0a: {"noop", false, false},
	0x0b: {"version", false, false},
	0x0e: {"append", false, true}, 0x19: {"append", true, true},
	0x0f: {"prepend", false, true}, 0x1a: {"prepend", true, true},
	0x10: {"stats", false, false},
	0x1b: {"verbosity", false, false},
	0x1c: {"touch", false, true},
	0x1d: {"gat", false, true}, 0x1e: {"gat", true, true},
}

func (p *parser) onBinaryRequest(data [][]byte) (proxylib.Op, int) {
	h, ok := peek(data, binHeader)
	if !ok {
		return proxylib.More, binHeader - avail(data)
	}
	keyLen := int(binary.BigEndian.Uint16(h[2:4]))
	extLen := int(h[4])
	bodyLen := int(binary.BigEndian.Uint32(h[8:12]))
	opaque := binary.BigEndian.Uint32(h[12:16])
	if bodyLen < keyLen+extLen || bodyLen > 64<<20 {
		return proxylib.Error, proxylib.ErrInvalidFrame
	}
	total := binHeader + bodyLen
	// memcached reads only the key of a Stat request (extras none, the
	// body's length unchecked): a body past the key would be its next
	// request. Every other opcode's body memcached reads whole or closes
	// the connection on.
	if h[1] == 0x10 && (extLen != 0 || bodyLen != keyLen) {
		return proxylib.Error, proxylib.ErrInvalidFrame
	}
	op, known := binOps[h[1]]
	var keys []string
	if keyLen > 0 {
		kb, ok := peek(data, binHeader+extLen+keyLen)
		if !ok {
			return proxylib.More, binHeader + extLen + keyLen - avail(data)
		}
		keys = []string{string(kb[binHeader+extLen:])}
	}
	if !known {
		p.record(flow.Denied, "opcode 0x"+strconv.FormatUint(uint64(h[1]), 16), keys, "unknown opcode")
		p.answerBinary(h[1], opaque, 0x0081, "Unknown command")
		return proxylib.Drop, total
	}
	verdict, reason := p.decide(op.name, keys)
	switch verdict {
	case flow.Error:
		p.record(flow.Error, op.name, keys, reason)
		return proxylib.Error, proxylib.ErrPolicyDenied
	case flow.Denied:
		p.record(flow.Denied, op.name, keys, "access denied")
		p.answerBinary(h[1], opaque, binStatusDenied, "Access denied")
		return proxylib.Drop, total
	}
	if len(p.queue) >= maxPending {
		return proxylib.Error, proxylib.ErrFrameTooLarge
	}
	if !op.quiet {
		p.queue = append(p.queue, pending{opaque: opaque})
	}
	p.record(verdict, op.name, keys, reason)
	return proxylib.Pass, total
}

func (p *parser) answerBinary(opcode byte, opaque uint32, status uint16, msg string) {
	b := make([]byte, binHeader+len(msg))
	b[0] = 0x81
	b[1] = opcode
	binary.BigEndian.PutUint16(b[6:8], status)
	binary.BigEndian.PutUint32(b[8:12], uint32(len(msg)))
	binary.BigEndian.PutUint32(b[12:16], opaque)
	copy(b[binHeader:], msg)
	p.answer(b)
}

// --- replies ---

func (p *parser) onReply(data [][]byte) (proxylib.Op, int) {
	if firstByte(data) == 0x81 {
		h, ok := peek(data, binHeader)
		if !ok {
			return proxylib.More, binHeader - avail(data)
		}
		total := binHeader + int(binary.BigEndian.Uint32(h[8:12]))
		p.answeredBinary(binary.BigEndian.Uint32(h[12:16]))
		return proxylib.Pass, total
	}
	line, n, ok := readLine(data)
	if !ok {
		if n > maxLine {
			// A value line is short; a longer one is not memcached's.
			return proxylib.Error, proxylib.ErrInvalidFrame
		}
		return proxylib.More, 1
	}
	total := n
	f := strings.Fields(string(line))
	word := ""
	if len(f) > 0 {
		word = f[0]
	}
	switch {
	case word == "VALUE" && len(f) >= 4:
		size, err := strconv.Atoi(f[3])
		if err != nil || size < 0 {
			return proxylib.Error, proxylib.ErrInvalidFrame
		}
		return proxylib.Pass, n + size + 2 // part of a get's answer
	case word == "VA" && len(f) >= 2:
		size, err := strconv.Atoi(f[1])
		if err != nil || size < 0 {
			return proxylib.Error, proxylib.ErrInvalidFrame
		}
		total = n + size + 2
	case word == "STAT":
		return proxylib.Pass, n
	}
	// The line ends the head's answer unless the head is a get/stats
	// still listing (VALUE/STAT above) and this is not its END or an
	// error line.
	if len(p.queue) > 0 && p.queue[0].multi && word != "END" && !strings.HasSuffix(word, "ERROR") {
		return proxylib.Pass, total
	}
	p.answeredText()
	return proxylib.Pass, total
}

// answeredText pops the head (answered) and injects the denials that
// were waiting for it.
func (p *parser) answeredText() {
	if len(p.queue) > 0 && p.queue[0].deny == nil {
		p.queue = p.queue[1:]
	}
	p.flushDenials()
}

// answeredBinary pops the requests up to the one with that opaque (quiet
// requests before it were answered by silence).
func (p *parser) answeredBinary(opaque uint32) {
	for i, q := range p.queue {
		if q.deny == nil && q.opaque == opaque {
			// Denials before it were injected in their turn already;
			// those queued behind earlier requests go now, in order.
			var keep []pending
			for _, d := range p.queue[:i] {
				if d.deny != nil {
					p.conn.Inject(true, d.deny)
				}
			}
			keep = append(keep, p.queue[i+1:]...)
			p.queue = keep
			break
		}
	}
	p.flushDenials()
}

func (p *parser) flushDenials() {
	for len(p.queue) > 0 && p.queue[0].deny != nil {
		p.conn.Inject(true, p.queue[0].deny)
		p.queue = p.queue[1:]
	}
}

// --- records ---

func (p *parser) record(v flow.Verdict, cmd string, keys []string, reason string) {
	if p.f.sink == nil {
		return
	}
	r := &flow.Record{Time: p.f.now(), Verdict: v, Proto: "memcache", Reason: reason}
	if p.info.Ingress {
		r.Direction = flow.Ingress
	} else {
		r.Direction = flow.Egress
	}
	r.Source = flow.EndpointAt(p.info.SrcIdentity, p.info.SrcAddr)
	r.Destination = flow.EndpointAt(p.info.DstIdentity, p.info.DstAddr)
	summary := cmd
	if len(keys) > 0 {
		summary += " " + strings.Join(keys, " ")
	}
	if reason == "" {
		r.Reason = summary
	} else {
		r.Reason = summary + ": " + reason
	}
	p.f.sink.Emit(r)
}

// --- byte helpers over the stream's segments ---

func avail(data [][]byte) int {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	return n
}

func firstByte(data [][]byte) byte {
	for _, d := range data {
		if len(d) > 0 {
			return d[0]
		}
	}
	return 0
}

// peek returns the first n bytes (copied when they span segments).
func peek(data [][]byte, n int) ([]byte, bool) {
	if len(data) > 0 && len(data[0]) >= n {
		return data[0][:n], true
	}
	if avail(data) < n {
		return nil, false
	}
	out := make([]byte, 0, n)
	for _, d := range data {
		out = append(out, d[:min(len(d), n-len(out))]...)
		if len(out) == n {
			break
		}
	}
	return out, true
}

// readLine returns the first line without its end ("\r\n" or "\n", as
// memcached strips it: one "\r" at most) and its length with the end; ok
// false with n the bytes scanned when no end is there yet.
func readLine(data [][]byte) (line []byte, n int, ok bool) {
	var buf []byte
	for _, d := range data {
		if i := bytes.IndexByte(d, '\n'); i >= 0 {
			buf = append(buf, d[:i+1]...)
			n = len(buf)
			line = bytes.TrimSuffix(buf[:len(buf)-1], []byte{'\r'})
			return line, n, true
		}
		buf = append(buf, d...)
		if len(buf) > maxLine {
			return nil, len(buf), false
		}
	}
	return nil, len(buf), false
}
