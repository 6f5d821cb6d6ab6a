package docs

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/wardproxy/ward/policy"
)

// TestPolicySupportTable: policy-support.md has a section per type a
// policy can carry (policy.Policy and every struct it holds, the L7 rules
// included) with a row per JSON field, no row for a field that does not
// exist, a row per entity, and every test it names exists — so a new
// construct cannot land without saying where wardd enforces it and which
// test proves it (or that validation refuses it).
func TestPolicySupportTable(t *testing.T) {
	doc, err := os.ReadFile("policy-support.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := supportSections(doc)

	want := map[string][]string{}
	supportTypes(reflect.TypeFor[policy.Policy](), want)
	if len(want) < 25 {
		t.Fatalf("found %d policy types; the reflection walk is broken", len(want))
	}
	for typ, fields := range want {
		rows, ok := sections[typ]
		if !ok {
			t.Errorf("policy-support.md has no section ### `%s`", typ)
			continue
		}
		for _, f := range fields {
			if !rows[f] {
				t.Errorf("policy-support.md: section `%s` has no row for the field `%s`", typ, f)
			}
			delete(rows, f)
		}
		for f := range rows {
			t.Errorf("policy-support.md: section `%s` has a row for `%s`, which is not a field of it", typ, f)
		}
	}
	for _, e := range policy.Entities {
		if !sections["Entities"][e] {
			t.Errorf("policy-support.md: the entities table has no row for `%s`", e)
		}
	}

	tests := map[string]bool{}
	root := filepath.Join("..")
	decl := regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]*)\(`)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "build" || d.Name() == "third_party" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, "_test.go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range decl.FindAllSubmatch(b, -1) {
				tests[string(m[1])] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\bTest[A-Z][A-Za-z0-9]*`).FindAll(doc, -1) {
		if !tests[string(m)] {
			t.Errorf("policy-support.md names %s, which is no test of the module", m)
		}
	}
}

// supportSections maps each "### `type`" section (or "### Entities") of
// the page to the first-column names of its table rows.
func supportSections(doc []byte) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	heading := regexp.MustCompile("^### (?:`([^`]+)`|(Entities))")
	row := regexp.MustCompile("^\\| `([^`]+)` \\|")
	var cur map[string]bool
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if m := heading.FindSubmatch(line); m != nil {
			name := string(m[1]) + string(m[2])
			cur = map[string]bool{}
			out[name] = cur
			continue
		}
		if bytes.HasPrefix(line, []byte("## ")) || bytes.HasPrefix(line, []byte("### ")) {
			cur = nil
		}
		if m := row.FindSubmatch(line); m != nil && cur != nil {
			cur[string(m[1])] = true
		}
	}
	return out
}

// supportTypes records the JSON field names of t and of every struct of
// the policy packages it holds, by the type's package-qualified name.
func supportTypes(t reflect.Type, out map[string][]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || !strings.HasPrefix(t.PkgPath(), "github.com/wardproxy/ward/policy") {
		return
	}
	if _, ok := out[t.String()]; ok {
		return
	}
	out[t.String()] = []string{}
	for f := range t.Fields() {
		tag := strings.Split(f.Tag.Get("json"), ",")[0]
		if !f.IsExported() || tag == "-" || tag == "" {
			continue
		}
		out[t.String()] = append(out[t.String()], tag)
		supportTypes(f.Type, out)
	}
}
