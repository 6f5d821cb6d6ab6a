package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func examplesDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestExamples runs `ward policy test` on every example and compares the
// verdicts with <name>.expected.jsonl (the seed tutorials' outcomes).
func TestExamples(t *testing.T) {
	flows, err := filepath.Glob(filepath.Join(examplesDir(t), "*", "*.flows.json"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join(examplesDir(t), "*", "*", "*.flows.json"))
	flows = append(flows, more...)
	if len(flows) < 10 {
		t.Fatalf("found only %d flows files", len(flows))
	}
	for _, fl := range flows {
		rel, _ := filepath.Rel(examplesDir(t), fl)
		t.Run(rel, func(t *testing.T) {
			want := map[string]string{}
			data, err := os.ReadFile(strings.TrimSuffix(fl, ".flows.json") + ".expected.jsonl")
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				var r struct{ Name, Verdict string }
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatal(err)
				}
				want[r.Name] = r.Verdict
			}
			var out, errOut bytes.Buffer
			run([]string{"policy", "test", "--policy", filepath.Dir(fl), "--flows", fl}, &out, &errOut)
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != len(want) {
				t.Fatalf("got %d results, want %d\nstdout:\n%s\nstderr:\n%s", len(lines), len(want), out.String(), errOut.String())
			}
			for _, line := range lines {
				var r struct{ Name, Verdict, Reason string }
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatalf("bad output line %q: %v", line, err)
				}
				if r.Verdict != want[r.Name] {
					t.Errorf("%s: got %s (%s); want %s", r.Name, r.Verdict, r.Reason, want[r.Name])
				}
			}
		})
	}
}

func TestValidateExamples(t *testing.T) {
	// Each example directory is its own policy set.
	var dirs []string
	err := filepath.WalkDir(examplesDir(t), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if ents, _ := os.ReadDir(p); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return !e.IsDir() }) {
				dirs = append(dirs, p)
			}
		}
		return nil
	})
	if err != nil || len(dirs) < 10 {
		t.Fatalf("%d dirs, %v", len(dirs), err)
	}
	var out, errOut bytes.Buffer
	if code := run(append([]string{"policy", "validate"}, dirs...), &out, &errOut); code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "policies valid") {
		t.Errorf("stdout = %q", out.String())
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidateErrors(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ok}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {app: b}}]}]
`)
	bad := writeFile(t, dir, "kafka.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: secure-empire-kafka}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce, apiKey: fetch}]
  - fromEndpoint: []
`)
	malformed := writeFile(t, dir, "broken.yaml", "apiVersion: [\n")
	var out, errOut bytes.Buffer
	if code := run([]string{"policy", "validate", good}, &out, &errOut); code != 0 {
		t.Fatalf("good: exit %d: %s", code, errOut.String())
	}
	out.Reset()
	errOut.Reset()
	code := run([]string{"policy", "validate", good, bad, malformed}, &out, &errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{
		bad + ": secure-empire-kafka: spec.ingress[1].toPorts[0].rules.kafka[0]: role and apiKey are mutually exclusive (line 12)",
		`spec.ingress[2].fromEndpoint: unknown field "fromEndpoint" (did you mean "fromEndpoints"?)`,
		malformed + ": malformed YAML",
	} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
		}
	}
}

func TestValidateDuplicate(t *testing.T) {
	dir := t.TempDir()
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: same}\nspec: {endpointSelector: {}, ingress: [{}]}\n"
	writeFile(t, dir, "a.yaml", doc)
	writeFile(t, dir, "b.yaml", doc)
	var out, errOut bytes.Buffer
	if code := run([]string{"policy", "validate", dir}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "already defined") {
		t.Errorf("exit %d: %s", code, errOut.String())
	}
}

func TestPolicyTestBadFlows(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "p.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ok}
spec:
  endpointSelector: {}
  ingress: [{}]
`)
	for name, flows := range map[string]string{
		"unknown field": `[{"name":"x","from":{"entity":"world"},"to":{"labels":{"a":"b"}},"port":80,"colour":"red"}]`,
		"two peers":     `[{"name":"x","from":{"entity":"world","cidr":"1.2.3.4"},"to":{"labels":{"a":"b"}},"port":80}]`,
		"not json":      `{`,
		"fqdn source":   `[{"name":"x","from":{"fqdn":"a.com"},"to":{"labels":{"a":"b"}},"port":80}]`,
		"bad apiKey":    `[{"name":"x","from":{"entity":"world"},"to":{"labels":{"a":"b"}},"port":80,"kafka":{"apiKey":"nope"}}]`,
	} {
		t.Run(name, func(t *testing.T) {
			f := writeFile(t, dir, "f.flows.json", flows)
			var out, errOut bytes.Buffer
			if code := run([]string{"policy", "test", "--policy", p, "--flows", f}, &out, &errOut); code != 1 {
				t.Fatalf("exit %d, want 1; stderr %s", code, errOut.String())
			}
			if errOut.Len() == 0 {
				t.Error("no error message")
			}
		})
	}
}

func TestPolicyUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"policy"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if code := run([]string{"policy", "test", "--policy", "x"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if code := run([]string{"policy", "validate"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
}
