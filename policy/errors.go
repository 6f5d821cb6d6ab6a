package policy

import (
	"errors"
	"strings"
)

// FieldError is one problem in a policy, located by file, policy name and
// field path. Its message reads like
//
//	kafka.yaml: secure-empire-kafka: spec.ingress[1].toPorts[0].rules.kafka[0]: role and apiKey are mutually exclusive
//
// Several FieldErrors are returned joined with errors.Join; use
// FieldErrors to get them back.
type FieldError struct {
	File   string // file name, may be empty
	Policy string // metadata.name, may be empty
	Path   string // field path such as spec.ingress[0].toPorts[1]
	Value  string // the offending value, when there is one
	Msg    string // what is wrong, lower case
	// Line is the 1-based line of the field in File when known (best
	// effort, block-style YAML), 0 otherwise. Error does not print it.
	Line int
}

func (e *FieldError) Error() string {
	var b strings.Builder
	for _, s := range []string{e.File, e.Policy, e.Path} {
		if s != "" {
			b.WriteString(s)
			b.WriteString(": ")
		}
	}
	b.WriteString(e.Msg)
	return b.String()
}

// FieldErrors returns every *FieldError in err (walking errors.Join trees
// and wrapping).
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if fe, ok := err.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		walk(errors.Unwrap(err))
	}
	walk(err)
	return out
}

// errList collects FieldErrors for one policy.
type errList struct {
	file, policy string
	errs         []error
	warns        []*FieldError
	gated        []FeatureUse
}

// gate records a use of a gated feature (Policy.Gated).
func (l *errList) gate(f Feature, path string) {
	l.gated = append(l.gated, FeatureUse{Feature: f, Path: path})
}

func (l *errList) add(path, value, msg string) {
	l.errs = append(l.errs, &FieldError{File: l.file, Policy: l.policy, Path: path, Value: value, Msg: msg})
}

func (l *errList) warn(path, msg string) {
	l.warns = append(l.warns, &FieldError{File: l.file, Policy: l.policy, Path: path, Msg: msg})
}

func (l *errList) err() error { return errors.Join(l.errs...) }

// didYouMean returns the candidate closest to s when it is close enough.
func didYouMean(s string, candidates []string) string {
	best, bestD := "", 1<<30
	ls := strings.ToLower(s)
	for _, c := range candidates {
		d := levenshtein(ls, strings.ToLower(c))
		if d < bestD {
			best, bestD = c, d
		}
	}
	limit := max(2, len(s)/3)
	if bestD <= limit {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
