// Package r2d2 is the small line-based test protocol of generic L7 policy
// (`l7proto: r2d2`, after Cilium's proxylib test parser): a request is one
// line, `READ <file>`, `WRITE <file>`, `HALT` or `RESET`, answered by one
// line; rules match `cmd` (exactly, any case) and `file` (a regular
// expression, anchored as written). A denied request gets `ERROR` in its
// turn and never reaches the server.
package r2d2

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
)

const maxLine = 1024

// Matcher decides requests; nil allows every request.
type Matcher struct {
	rules []rule
	and   *Matcher // also required (And)
}

// And is the matcher that allows a request only when both m and o allow
// it (nil allows everything).
func (m *Matcher) And(o *Matcher) *Matcher {
	switch {
	case o == nil || m == o:
		return m
	case m == nil:
		return o
	}
	c := *m
	if c.and != nil {
		o = c.and.And(o)
	}
	c.and = o
	return &c
}

type rule struct {
	cmd  string
	file *regexp.Regexp
}

// Compile compiles rules (nil: allow every request).
func Compile(rules []l7.GenericRule) (*Matcher, error) {
	if rules == nil {
		return nil, nil
	}
	m := &Matcher{}
	for i, r := range rules {
		var cr rule
		for k, v := range r {
			switch k {
			case "cmd":
				cr.cmd = strings.ToUpper(v)
			case "file":
				re, err := regexp.Compile(v)
				if err != nil {
					return nil, fmt.Errorf("l7[%d].file: %w", i, err)
				}
				cr.file = re
			default:
				return nil, fmt.Errorf("l7[%d]: unknown key %q (want cmd or file)", i, k)
			}
		}
		m.rules = append(m.rules, cr)
	}
	return m, nil
}

// Allows reports whether a rule allows cmd on file.
func (m *Matcher) Allows(cmd, file string) bool {
	if m == nil {
		return true
	}
	if m.and != nil && !m.and.Allows(cmd, file) {
		return false
	}
	for _, r := range m.rules {
		if (r.cmd == "" || r.cmd == cmd) && (r.file == nil || r.file.MatchString(file)) {
			return true
		}
	}
	return false
}

// RuleSource gives a connection's matcher (see memcache.RuleSource).
type RuleSource interface {
	Rules(ingress bool, port uint16, remote uint32) (*Matcher, bool)
}

// Factory creates parsers (proxylib.ParserFactory).
type Factory struct {
	rules RuleSource
	sink  flow.Sink
}

// NewParserFactory returns the parser factory over rules, recording to
// sink (nil: none).
func NewParserFactory(rules RuleSource, sink flow.Sink) *Factory {
	return &Factory{rules: rules, sink: sink}
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
// audit mode: a well-formed request the rules deny then passes, recorded
// as flow.Audited. Asked only for a request that would be denied.
type Auditor interface {
	Audit() bool
}

func (p *parser) audit() bool {
	a, ok := p.f.rules.(Auditor)
	return ok && a.Audit()
}

type parser struct {
	f       *Factory
	conn    proxylib.Connection
	info    *proxylib.ConnInfo
	remote  uint32
	pending []bool // per request in flight: true for a denial to inject
}

// OnData implements proxylib.Parser: one line at a time both ways.
func (p *parser) OnData(reply, _ bool, data [][]byte) (proxylib.Op, int) {
	var buf []byte
	n := -1
	for _, d := range data {
		if i := bytes.IndexByte(d, '\n'); i >= 0 {
			buf = append(buf, d[:i+1]...)
			n = len(buf)
			break
		}
		buf = append(buf, d...)
		if len(buf) > maxLine {
			return proxylib.Error, proxylib.ErrFrameTooLarge
		}
	}
	if n < 0 {
		return proxylib.More, 1
	}
	if reply {
		if len(p.pending) > 0 {
			p.pending = p.pending[1:]
		}
		p.flush()
		return proxylib.Pass, n
	}
	f := strings.Fields(string(buf))
	cmd, file := "", ""
	if len(f) > 0 {
		cmd = strings.ToUpper(f[0])
	}
	if len(f) > 1 {
		file = f[1]
	}
	valid := (cmd == "READ" || cmd == "WRITE") && len(f) == 2 || (cmd == "HALT" || cmd == "RESET") && len(f) == 1
	m, ok := p.f.rules.Rules(p.info.Ingress, p.info.DstPort, p.remote)
	audit := valid && (!ok || !m.Allows(cmd, file)) && p.audit()
	if !ok && !audit {
		return proxylib.Error, proxylib.ErrPolicyDenied
	}
	if audit {
		// Audit mode: a well-formed request the policy denies passes.
		p.record(flow.Audited, cmd, file)
		p.pending = append(p.pending, false)
		return proxylib.Pass, n
	}
	if !valid || !m.Allows(cmd, file) {
		p.record(flow.Denied, cmd, file)
		if len(p.pending) == 0 {
			p.conn.Inject(true, []byte("ERROR\r\n"))
		} else {
			p.pending = append(p.pending, true)
		}
		return proxylib.Drop, n
	}
	p.record(flow.Allowed, cmd, file)
	p.pending = append(p.pending, false)
	return proxylib.Pass, n
}

// flush injects the denials at the head of the queue.
func (p *parser) flush() {
	for len(p.pending) > 0 && p.pending[0] {
		p.conn.Inject(true, []byte("ERROR\r\n"))
		p.pending = p.pending[1:]
	}
}

func (p *parser) record(v flow.Verdict, cmd, file string) {
	if p.f.sink == nil {
		return
	}
	r := &flow.Record{Time: time.Now(), Verdict: v, Proto: "r2d2", Reason: strings.TrimSpace(cmd + " " + file),
		Source: flow.EndpointAt(p.info.SrcIdentity, p.info.SrcAddr), Destination: flow.EndpointAt(p.info.DstIdentity, p.info.DstAddr)}
	if p.info.Ingress {
		r.Direction = flow.Ingress
	} else {
		r.Direction = flow.Egress
	}
	p.f.sink.Emit(r)
}
