package http

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	"github.com/wardproxy/ward/policy/l7"
)

// MaxRegexLen is the longest path, method or host expression Compile
// accepts (l7.MaxRegexLen: validation refuses longer ones). Envoy's default
// RE2 program-size limit (100) rejects ordinary long path alternations
// and, in Cilium, the whole policy update with them (cilium#41314); ward
// takes anything up to this size and reports a longer one as an error of
// that rule only.
const MaxRegexLen = l7.MaxRegexLen

// maxLiteralSet bounds how many strings a finite expression (GET|POST,
// /a/(b|c)) may expand to before it is matched as a regex instead.
const maxLiteralSet = 16

// SecretSource resolves headerMatches secrets at compile time. Secret
// returns the value held by the named secret, and false when it has none.
// A nil SecretSource has no secrets. Implementations must be safe for
// concurrent use.
type SecretSource interface {
	Secret(namespace, name string) (string, bool)
}

// HeaderReader gives read access to a request's headers. Header returns the
// value of the header with the lower-case name (all its values joined with
// "," when it occurs more than once) and whether it is present.
type HeaderReader interface {
	Header(name string) (string, bool)
}

// MapHeaders is a HeaderReader over a map whose keys are lower-case header
// names.
type MapHeaders map[string]string

// Header returns h[name].
func (h MapHeaders) Header(name string) (string, bool) {
	v, ok := h[name]
	return v, ok
}

// Request is what the matcher sees of an HTTP request. An empty Path or
// Host means the pseudo-header is absent: a rule constraining it does not
// match.
type Request struct {
	Method  string // :method
	Path    string // :path, query included
	Host    string // :authority (Host for HTTP/1.1)
	Headers HeaderReader
}

// EditOp is what a HeaderEdit does.
type EditOp uint8

// Edit operations: the mismatch actions ADD, REPLACE and DELETE.
const (
	EditAdd    EditOp = iota + 1 // append a value (Envoy addCopy)
	EditSet                      // replace every value (Envoy setCopy)
	EditRemove                   // remove the header
)

func (o EditOp) String() string {
	switch o {
	case EditAdd:
		return "add"
	case EditSet:
		return "set"
	case EditRemove:
		return "remove"
	}
	return fmt.Sprintf("EditOp(%d)", uint8(o))
}

// HeaderWriter changes a request's headers. Envoy's binding implements it
// (proxylib.HTTPStream has these methods).
type HeaderWriter interface {
	SetRequestHeader(name, value string)
	RemoveRequestHeader(name string)
	AddRequestHeader(name, value string)
}

// HeaderEdit is a change a headerMatches mismatch action asks for. Value
// may hold a secret: never log it (String redacts it).
type HeaderEdit struct {
	Op     EditOp
	Name   string // lower case
	Value  string // for EditAdd and EditSet
	Secret bool   // Value comes from a secret
	Rule   int    // index of the rule whose headerMatch asked for it
}

// Apply makes the edit on w.
func (e HeaderEdit) Apply(w HeaderWriter) {
	switch e.Op {
	case EditAdd:
		w.AddRequestHeader(e.Name, e.Value)
	case EditSet:
		w.SetRequestHeader(e.Name, e.Value)
	case EditRemove:
		w.RemoveRequestHeader(e.Name)
	}
}

// String describes the edit without secret values.
func (e HeaderEdit) String() string {
	if e.Op == EditRemove {
		return fmt.Sprintf("remove %s", e.Name)
	}
	v := e.Value
	if e.Secret {
		v = "[redacted]"
	}
	return fmt.Sprintf("%s %s: %q", e.Op, e.Name, v)
}

// HeaderNote records a headerMatch mismatch that let the request continue
// (LOG, and the other actions). It holds names only, never values.
type HeaderNote struct {
	Rule   int
	Name   string
	Action l7.MismatchAction
}

// Result is the decision on one request.
type Result struct {
	Allowed bool
	// Rule is the index of the first matching rule, -1 when none matched
	// or the rule list is empty.
	Rule int
	// Edits are the header changes to make before forwarding an allowed
	// request; nil unless headerMatches actions fired.
	Edits []HeaderEdit
	// Notes are the mismatches that did not deny; nil unless some fired.
	Notes []HeaderNote
}

// Matcher is a compiled list of HTTP rules of one (direction, port, remote
// identity). It is immutable and safe for concurrent use.
type Matcher struct {
	rules    []rule
	allowAll bool // the list is empty or has an empty rule
	emptyIdx int  // index of the first empty rule, -1 when the list is empty
	effects  bool // some rule has headerMatches with an action
	index    pathIndex
	autos    [nFields]automaton
}

// CompileError is a bad rule: its rule never matches, the others work.
type CompileError struct {
	Rule  int    // index in the rule list
	Field string // "path", "method", "host", "headers[1]", "headerMatches[0]"
	Err   error
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("http[%d].%s: %v", e.Rule, e.Field, e.Err)
}

func (e *CompileError) Unwrap() error { return e.Err }

// Compile compiles rules once (per policy version); secrets may be nil.
// It always returns a usable Matcher. A rule that cannot be compiled (bad
// regex, regex longer than MaxRegexLen, empty header name) never matches,
// and the returned error lists each such rule as a *CompileError (joined
// with errors.Join); callers should keep the Matcher and report the error,
// so that one bad rule does not take the others down.
func Compile(rules []l7.HTTPRule, secrets SecretSource) (*Matcher, error) {
	m := &Matcher{rules: make([]rule, len(rules)), emptyIdx: -1}
	if len(rules) == 0 {
		m.allowAll = true
	}
	var errs []error
	for i := range rules {
		r, err := compileRule(i, &rules[i], secrets)
		m.rules[i] = r
		if err != nil {
			errs = append(errs, err...)
		}
		if r.empty && !m.allowAll {
			m.allowAll, m.emptyIdx = true, i
		}
		if len(r.effects) > 0 {
			m.effects = true
		}
	}
	m.index = buildIndex(m.rules)
	m.buildAutomata()
	return m, errors.Join(errs...)
}

// Rules returns how many rules m holds.
func (m *Matcher) Rules() int { return len(m.rules) }

// Match decides on req (a nil req is denied). It allocates only when headerMatches actions fire
// (for Edits and Notes).
func (m *Matcher) Match(req *Request) Result {
	if m == nil || req == nil {
		return Result{Rule: -1}
	}
	if m.effects {
		return m.matchAll(req)
	}
	if m.allowAll && m.emptyIdx <= 0 {
		return Result{Allowed: true, Rule: m.emptyIdx}
	}
	var sel selection
	best := -1
	if m.selectRules(req, &sel) {
		best = m.scan(req, &sel, nil)
	} else {
		best = m.index.lookup(m.rules, req)
	}
	if m.allowAll && (best < 0 || best > m.emptyIdx) {
		best = m.emptyIdx
	}
	return Result{Allowed: best >= 0, Rule: best}
}

// matchAll evaluates every rule, collecting the actions of all matching
// ones (Cilium evaluates every rule when headerMatches are present).
func (m *Matcher) matchAll(req *Request) Result {
	res := Result{Rule: -1}
	var sel selection
	if m.selectRules(req, &sel) {
		m.scan(req, &sel, &res)
	} else {
		for i := range m.rules {
			if m.rules[i].matchBase(req) {
				m.rules[i].collect(req, &res)
			}
		}
	}
	if !res.Allowed {
		res.Edits, res.Notes = nil, nil
	}
	return res
}

// collect runs r's actions (r's other conditions hold) into res.
func (r *rule) collect(req *Request, res *Result) {
	if r.applyEffects(req, res) && res.Rule < 0 {
		res.Rule = r.idx
		res.Allowed = true
	}
}

// rule is one compiled PortRuleHTTP.
type rule struct {
	idx     int
	broken  bool // did not compile: never matches
	empty   bool // no conditions: matches everything
	method  field
	path    field
	host    field
	headers []headerCond
	effects []headerMatch
	covered [nFields]bool // the field's automaton decides it
}

func compileRule(i int, p *l7.HTTPRule, secrets SecretSource) (rule, []error) {
	r := rule{idx: i}
	var errs []error
	fail := func(fieldName string, err error) {
		r.broken = true
		errs = append(errs, &CompileError{Rule: i, Field: fieldName, Err: err})
	}
	var err error
	if r.method, err = compileField(p.Method); err != nil {
		fail("method", err)
	}
	if r.path, err = compileField(p.Path); err != nil {
		fail("path", err)
	}
	if r.host, err = compileField(p.Host); err != nil {
		fail("host", err)
	}
	for j, h := range p.Headers {
		c, err := parseHeader(h)
		if err != nil {
			fail(fmt.Sprintf("headers[%d]", j), err)
			continue
		}
		r.headers = append(r.headers, c)
	}
	for j, hm := range p.HeaderMatches {
		fieldName := fmt.Sprintf("headerMatches[%d]", j)
		if hm == nil {
			fail(fieldName, errors.New("null entry"))
			continue
		}
		c, err := compileHeaderMatch(hm, secrets)
		if err != nil {
			fail(fieldName, err)
			continue
		}
		if c.action == "" {
			// Without an action a mismatch denies: an ordinary condition
			// (Cilium sends these to Envoy as plain header matchers).
			r.headers = append(r.headers, headerCond{name: c.name, value: c.value, present: c.value == "", constantTime: true, never: c.never})
			continue
		}
		r.effects = append(r.effects, c)
	}
	r.empty = !r.broken && !r.method.set && !r.path.set && !r.host.set && len(r.headers) == 0 && len(r.effects) == 0
	return r, errs
}

// matchBase reports whether every condition but the headerMatch actions
// holds.
func (r *rule) matchBase(req *Request) bool {
	return r.matchRest(req) && r.path.match(req.Path)
}

// matchRest is matchBase without the path (the caller checked it).
func (r *rule) matchRest(req *Request) bool {
	if r.broken {
		return false
	}
	if !r.method.match(req.Method) || !r.matchHost(req.Host) {
		return false
	}
	for i := range r.headers {
		if !r.headers[i].match(req.Headers) {
			return false
		}
	}
	return true
}

func (r *rule) matchHost(host string) bool {
	if !r.host.set {
		return true
	}
	if r.host.match(host) {
		return true
	}
	if h, ok := stripPort(host); ok {
		return r.host.match(h)
	}
	return false
}

// stripPort returns authority without a trailing ":digits" port.
func stripPort(a string) (string, bool) {
	i := strings.LastIndexByte(a, ':')
	if i <= 0 || i == len(a)-1 {
		return "", false
	}
	for _, c := range a[i+1:] {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	h := a[:i]
	if strings.HasPrefix(h, "[") != strings.HasSuffix(h, "]") {
		return "", false
	}
	if !strings.HasPrefix(h, "[") && strings.IndexByte(h, ':') >= 0 {
		return "", false // a bare IPv6 address, no port
	}
	return h, true
}

// applyEffects runs r's headerMatch actions, appending to res, and reports
// whether the rule still matches.
func (r *rule) applyEffects(req *Request, res *Result) bool {
	for i := range r.effects {
		c := &r.effects[i]
		if c.never {
			return false
		}
		v, present := readHeader(req.Headers, c.name)
		if c.value == "" {
			if present {
				continue
			}
		} else if present && subtle.ConstantTimeCompare([]byte(v), []byte(c.value)) == 1 {
			continue
		}
		switch c.action {
		case l7.MismatchLog:
		case l7.MismatchAdd:
			res.Edits = append(res.Edits, HeaderEdit{Op: EditAdd, Name: c.name, Value: c.value, Secret: c.secret, Rule: r.idx})
		case l7.MismatchReplace:
			res.Edits = append(res.Edits, HeaderEdit{Op: EditSet, Name: c.name, Value: c.value, Secret: c.secret, Rule: r.idx})
		case l7.MismatchDelete:
			if c.value == "" || !present {
				continue // nothing wrong to remove
			}
			res.Edits = append(res.Edits, HeaderEdit{Op: EditRemove, Name: c.name, Rule: r.idx})
		default:
			return false
		}
		res.Notes = append(res.Notes, HeaderNote{Rule: r.idx, Name: c.name, Action: c.action})
	}
	return true
}

func readHeader(h HeaderReader, name string) (string, bool) {
	if h == nil {
		return "", false
	}
	return h.Header(name)
}

// headerCond is a condition on a header that denies when it fails.
type headerCond struct {
	name         string
	value        string
	present      bool // presence only
	constantTime bool // the value may be a secret
	never        bool // a secret that could not be resolved
}

func (c *headerCond) match(h HeaderReader) bool {
	if c.never {
		return false
	}
	v, ok := readHeader(h, c.name)
	if !ok {
		return false
	}
	if c.present {
		return true
	}
	if c.constantTime {
		return subtle.ConstantTimeCompare([]byte(v), []byte(c.value)) == 1
	}
	return v == c.value
}

// parseHeader parses a headers entry: "Name" or "Name: value" (Cilium
// splits at the first space and trims ':' from the end of the name).
func parseHeader(s string) (headerCond, error) {
	name, value, hasValue, err := l7.ParseHeader(s)
	if err != nil {
		return headerCond{}, err
	}
	return headerCond{name: name, value: value, present: !hasValue}, nil
}

// headerMatch is a compiled l7.HeaderMatch.
type headerMatch struct {
	name   string
	value  string // "" = presence match
	secret bool
	never  bool
	action l7.MismatchAction
}

func compileHeaderMatch(hm *l7.HeaderMatch, secrets SecretSource) (headerMatch, error) {
	if !hm.Mismatch.Known() {
		return headerMatch{}, fmt.Errorf("unknown mismatch action %q", hm.Mismatch)
	}
	if hm.Name == "" {
		return headerMatch{}, errors.New("empty header name")
	}
	c := headerMatch{name: strings.ToLower(hm.Name), value: hm.Value, action: hm.Mismatch}
	if hm.Secret != nil {
		// In Envoy the value arrives resolved: wardd puts the secret's
		// value in Value (xds.TranslationCache.Secrets), or leaves the
		// policy's fallback there when the secret is unavailable. Either
		// way it is never printed.
		c.secret = true
		var v string
		var ok bool
		if secrets != nil {
			v, ok = secrets.Secret(hm.Secret.Namespace, hm.Secret.Name)
		}
		switch {
		case ok && v != "":
			c.value = v
		case hm.Value == "":
			// No secret and no fallback: never matches (Cilium: exact ""
			// inverted, or a failed header match).
			c.never = true
		}
	}
	return c, nil
}

// field is a compiled path, method or host expression.
type field struct {
	set    bool
	lits   []string // the whole (finite) language, when small
	prefix string   // every match starts with it
	must   string   // every match contains it
	re     *regexp.Regexp
	tree   *syntax.Regexp // simplified, for the path automaton
}

func (f *field) match(s string) bool {
	if !f.set {
		return true
	}
	if s == "" {
		return false
	}
	if f.lits != nil {
		for _, l := range f.lits {
			if s == l {
				return true
			}
		}
		return false
	}
	if !strings.HasPrefix(s, f.prefix) || !strings.Contains(s, f.must) {
		return false
	}
	return f.re.MatchString(s)
}

// compileField compiles expr as an anchored (full-match) expression.
func compileField(expr string) (field, error) {
	if expr == "" {
		return field{}, nil
	}
	re, tree, err := l7.Regex(expr)
	if err != nil {
		return field{}, err
	}
	f := field{set: true, re: re, tree: tree.Simplify()}
	core := stripAnchors(f.tree)
	if core != nil {
		if lits, ok := expand(core, maxLiteralSet); ok {
			f.lits = lits
			if len(lits) == 0 {
				f.lits = []string{} // matches nothing ("" is never matched)
			}
		}
		f.prefix = literalPrefix(core)
		f.must = requiredLiteral(core)
	}
	return f, nil
}

// stripAnchors removes a leading ^ and a trailing $ of the top-level
// concatenation (redundant under full match). It returns nil when other
// anchors remain, so the analyses below stay conservative.
func stripAnchors(re *syntax.Regexp) *syntax.Regexp {
	for re.Op == syntax.OpCapture {
		re = re.Sub[0]
	}
	if re.Op != syntax.OpConcat {
		if isAnchor(re) {
			return &syntax.Regexp{Op: syntax.OpEmptyMatch}
		}
		return re
	}
	subs := re.Sub
	for len(subs) > 0 && (subs[0].Op == syntax.OpBeginText || subs[0].Op == syntax.OpBeginLine) {
		subs = subs[1:]
	}
	for len(subs) > 0 && (subs[len(subs)-1].Op == syntax.OpEndText || subs[len(subs)-1].Op == syntax.OpEndLine) {
		subs = subs[:len(subs)-1]
	}
	return &syntax.Regexp{Op: syntax.OpConcat, Sub: subs}
}

func isAnchor(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpBeginText, syntax.OpEndText, syntax.OpBeginLine, syntax.OpEndLine:
		return true
	}
	return false
}

// expand returns every string re matches when there are at most limit of
// them (each non-empty), and false otherwise or when unsure.
func expand(re *syntax.Regexp, limit int) ([]string, bool) {
	set, ok := lang(re, limit)
	if !ok {
		return nil, false
	}
	out := set[:0]
	for _, s := range set {
		if s != "" {
			out = append(out, s)
		}
	}
	return out, true
}

func lang(re *syntax.Regexp, limit int) ([]string, bool) {
	switch re.Op {
	case syntax.OpEmptyMatch:
		return []string{""}, true
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return nil, false
		}
		return []string{string(re.Rune)}, true
	case syntax.OpCharClass:
		var out []string
		for i := 0; i+1 < len(re.Rune); i += 2 {
			for c := re.Rune[i]; c <= re.Rune[i+1]; c++ {
				if len(out) >= limit {
					return nil, false
				}
				out = append(out, string(c))
			}
		}
		return out, true
	case syntax.OpCapture:
		return lang(re.Sub[0], limit)
	case syntax.OpQuest:
		s, ok := lang(re.Sub[0], limit)
		if !ok || len(s)+1 > limit {
			return nil, false
		}
		return append(s, ""), true
	case syntax.OpAlternate:
		var out []string
		for _, sub := range re.Sub {
			s, ok := lang(sub, limit)
			if !ok || len(out)+len(s) > limit {
				return nil, false
			}
			out = append(out, s...)
		}
		return out, true
	case syntax.OpConcat:
		out := []string{""}
		for _, sub := range re.Sub {
			s, ok := lang(sub, limit)
			if !ok || len(out)*len(s) > limit {
				return nil, false
			}
			next := make([]string, 0, len(out)*len(s))
			for _, a := range out {
				for _, b := range s {
					next = append(next, a+b)
				}
			}
			out = next
		}
		return out, true
	}
	return nil, false
}

// literalPrefix returns the literal text every match of re starts with.
func literalPrefix(re *syntax.Regexp) string {
	for re.Op == syntax.OpCapture {
		re = re.Sub[0]
	}
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return ""
		}
		return string(re.Rune)
	case syntax.OpConcat:
		var b strings.Builder
		for _, sub := range re.Sub {
			for sub.Op == syntax.OpCapture {
				sub = sub.Sub[0]
			}
			switch {
			case sub.Op == syntax.OpLiteral && sub.Flags&syntax.FoldCase == 0:
				b.WriteString(string(sub.Rune))
			case sub.Op == syntax.OpCharClass && len(sub.Rune) == 2 && sub.Rune[0] == sub.Rune[1]:
				b.WriteRune(sub.Rune[0])
			default:
				return b.String()
			}
		}
		return b.String()
	}
	return ""
}

// requiredLiteral returns the longest literal text that every match of re
// contains (a literal element of its top-level concatenation).
func requiredLiteral(re *syntax.Regexp) string {
	for re.Op == syntax.OpCapture {
		re = re.Sub[0]
	}
	lit := func(r *syntax.Regexp) string {
		for r.Op == syntax.OpCapture {
			r = r.Sub[0]
		}
		if r.Op == syntax.OpLiteral && r.Flags&syntax.FoldCase == 0 {
			return string(r.Rune)
		}
		return ""
	}
	if re.Op != syntax.OpConcat {
		return lit(re)
	}
	best := ""
	for _, sub := range re.Sub {
		if l := lit(sub); len(l) > len(best) {
			best = l
		}
	}
	return best
}
