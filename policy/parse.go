package policy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Parse reads the policies in one file: YAML (several documents separated
// by "---") or JSON (one object, an array, or a List with items). Every
// policy is decoded strictly (an unknown field is an error with a
// did-you-mean hint), validated and normalized.
//
// On error Parse returns the policies that were valid together with every
// problem found, as *FieldError values joined with errors.Join. A caller
// that applies whole files (like the directory source) should skip the file
// when err != nil.
func Parse(filename string, data []byte) ([]*Policy, error) {
	docs, starts, err := splitDocuments(data)
	if err != nil {
		return nil, &FieldError{File: filename, Msg: err.Error()}
	}
	var out []*Policy
	var errs []error
	for i, doc := range docs {
		where := filename
		if len(docs) > 1 {
			where = fmt.Sprintf("%s: document %d", filename, i+1)
		}
		named := filename
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			errs = append(errs, &FieldError{File: where, Msg: "malformed YAML: " + cleanYAMLError(err)})
			continue
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			errs = append(errs, &FieldError{File: where, Msg: "malformed document: " + err.Error()})
			continue
		}
		if v == nil {
			continue // empty document
		}
		objs := expandLists(v)
		for _, obj := range objs {
			p, err := decodePolicy(filename, where, named, obj)
			if len(objs) == 1 {
				// Line numbers, best effort, for a lone block-style object.
				fes := FieldErrors(err)
				if p != nil {
					fes = append(fes, p.Warnings...)
				}
				for _, fe := range fes {
					if n := locate(doc, fe.Path); n > 0 {
						fe.Line = starts[i] + n - 1
					}
				}
			}
			if err != nil {
				errs = append(errs, err)
			}
			if p != nil {
				out = append(out, p)
			}
		}
	}
	if len(errs) > maxErrors {
		n := len(errs) - maxErrors
		errs = append(errs[:maxErrors], &FieldError{File: filename, Msg: fmt.Sprintf("%d more errors not shown", n)})
	}
	return out, errors.Join(errs...)
}

// maxErrors caps the errors Parse reports for one file.
const maxErrors = 100

// ParseOne is Parse for data holding exactly one policy.
func ParseOne(filename string, data []byte) (*Policy, error) {
	ps, err := Parse(filename, data)
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, &FieldError{File: filename, Msg: fmt.Sprintf("want exactly one policy, found %d", len(ps))}
	}
	return ps[0], nil
}

func cleanYAMLError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "error converting YAML to JSON: ")
	return strings.TrimPrefix(s, "yaml: ")
}

// splitDocuments splits a YAML stream at "---" lines. It returns each
// non-empty document and the 1-based line it starts on.
func splitDocuments(data []byte) ([][]byte, []int, error) {
	var docs [][]byte
	var starts []int
	var cur bytes.Buffer
	start, n := 1, 0
	flush := func() {
		if len(bytes.TrimSpace(cur.Bytes())) > 0 {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			starts = append(starts, start)
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		n++
		line := sc.Text()
		t := strings.TrimRight(line, " \t\r")
		if t == "---" || strings.HasPrefix(t, "--- ") || strings.HasPrefix(t, "---\t") || t == "..." {
			flush()
			start = n + 1
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read: %w", err)
	}
	flush()
	return docs, starts, nil
}

// expandLists flattens arrays and List kinds into their objects.
func expandLists(v any) []any {
	switch t := v.(type) {
	case []any:
		var out []any
		for _, e := range t {
			out = append(out, expandLists(e)...)
		}
		return out
	case map[string]any:
		if k, _ := t["kind"].(string); k == kindList || k == kindCNPList || k == kindCCNPList {
			if items, ok := t["items"].([]any); ok {
				var out []any
				for _, e := range items {
					out = append(out, expandLists(e)...)
				}
				return out
			}
		}
	}
	return []any{v}
}

// decodePolicy decodes and validates one policy object. where names the
// document when the policy has no name; named is used otherwise.
func decodePolicy(filename, where, named string, obj any) (*Policy, error) {
	m, ok := obj.(map[string]any)
	if !ok {
		return nil, &FieldError{File: where, Msg: "a policy must be an object, got " + describe(obj)}
	}
	name := ""
	if md, ok := m["metadata"].(map[string]any); ok {
		name, _ = md["name"].(string)
	}
	if name != "" {
		where = named
	}
	l := &errList{file: where, policy: name}
	if k, _ := m["kind"].(string); k != "" && k != KindCNP && k != KindCCNP {
		// Another kind of object (a Deployment beside the policy in a
		// manifest, a typo in the kind): say so once instead of listing
		// its fields as unknown policy fields.
		msg := fmt.Sprintf("unsupported kind %q (want %s or %s)", k, KindCNP, KindCCNP)
		if dm := didYouMean(k, []string{KindCNP, KindCCNP}); dm != "" {
			msg += fmt.Sprintf("; did you mean %q?", dm)
		}
		l.add("kind", k, msg)
		return nil, l.err()
	}
	check(reflect.TypeFor[Policy](), obj, "", l)
	js, err := json.Marshal(obj)
	if err != nil {
		return nil, errors.Join(l.err(), &FieldError{File: where, Policy: name, Msg: err.Error()})
	}
	p := new(Policy)
	if err := json.Unmarshal(js, p); err != nil {
		// The walk above has reported the type errors.
		if len(l.errs) > 0 {
			return nil, l.err()
		}
		return nil, &FieldError{File: where, Policy: name, Msg: err.Error()}
	}
	p.File = filename
	// Validate even after unknown fields so one run reports everything.
	if err := p.validate(l); err != nil {
		return nil, err
	}
	return p, nil
}

// rawJSON holds a field ward accepts but does not interpret.
type rawJSON []byte

// UnmarshalJSON stores a copy of data.
func (r *rawJSON) UnmarshalJSON(data []byte) error {
	*r = bytes.Clone(data)
	return nil
}

// MarshalJSON returns the stored JSON (null when empty).
func (r rawJSON) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("null"), nil
	}
	return r, nil
}

// UnmarshalJSON accepts a JSON string or an integer.
func (p *PortString) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*p = PortString(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("port must be a string or a number")
	}
	*p = PortString(n.String())
	return nil
}

var (
	rawJSONType    = reflect.TypeFor[rawJSON]()
	portStringType = reflect.TypeFor[PortString]()
)

// check walks the generic document v against the Go type t and records
// unknown fields and type mismatches with their paths.
func check(t reflect.Type, v any, path string, l *errList) {
	switch t {
	case rawJSONType:
		return
	case portStringType:
		switch n := v.(type) {
		case string, nil:
		case json.Number:
			if _, err := n.Int64(); err != nil {
				l.add(path, n.String(), fmt.Sprintf("must be an integer or a name, got %s", n))
			}
		default:
			l.add(path, "", "must be a string or an integer, got "+describe(v))
		}
		return
	}
	if v == nil {
		return // null is the zero value
	}
	switch t.Kind() {
	case reflect.Pointer:
		check(t.Elem(), v, path, l)
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			l.add(path, "", "must be an object, got "+describe(v))
			return
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			f, ok := fields[k]
			if !ok {
				names := make([]string, 0, len(fields))
				for n := range fields {
					names = append(names, n)
				}
				msg := fmt.Sprintf("unknown field %q", k)
				if dm := didYouMean(k, names); dm != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", dm)
				}
				l.add(join(path, k), k, msg)
				continue
			}
			check(f.Type, m[k], join(path, k), l)
		}
	case reflect.Slice:
		s, ok := v.([]any)
		if !ok {
			l.add(path, "", "must be a list, got "+describe(v))
			return
		}
		for i, e := range s {
			ep := fmt.Sprintf("%s[%d]", path, i)
			if e == nil && t.Elem() != rawJSONType && t.Elem() != portStringType {
				l.add(ep, "", "must not be null (an empty list item?)")
				continue
			}
			check(t.Elem(), e, ep, l)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			l.add(path, "", "must be an object, got "+describe(v))
			return
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if m[k] == nil && t.Elem().Kind() == reflect.String {
				l.add(join(path, k), "", "must be a string, got null (use \"\")")
				continue
			}
			check(t.Elem(), m[k], join(path, k), l)
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			msg := "must be a string, got " + describe(v)
			if _, num := v.(json.Number); num {
				msg += " (quote it)"
			}
			if _, b := v.(bool); b {
				msg += " (quote it)"
			}
			l.add(path, fmt.Sprint(v), msg)
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			l.add(path, fmt.Sprint(v), "must be true or false, got "+describe(v))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if !ok {
			l.add(path, fmt.Sprint(v), "must be an integer, got "+describe(v))
			return
		}
		i, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil || i < -1<<(t.Bits()-1) || i > 1<<(t.Bits()-1)-1 {
			l.add(path, n.String(), fmt.Sprintf("must be an integer that fits in %d bits, got %s", t.Bits(), n))
		}
	default:
		l.add(path, "", "unsupported field type "+t.String())
	}
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

type fieldInfo struct{ Type reflect.Type }

func jsonFields(t reflect.Type) map[string]fieldInfo {
	out := make(map[string]fieldInfo, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = fieldInfo{Type: f.Type}
	}
	return out
}

func describe(v any) string {
	switch t := v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("string %q", t)
	case json.Number:
		return "number " + t.String()
	case bool:
		return "boolean " + strconv.FormatBool(t)
	case float64:
		if t == math.Trunc(t) {
			return "number " + strconv.FormatInt(int64(t), 10)
		}
		return "number"
	}
	return fmt.Sprintf("%T", v)
}
