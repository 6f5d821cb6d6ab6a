package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPolicySuggestFile: `ward policy suggest --file` on the saved hubble
// output of the end-to-end round trip prints the golden policy; no flow
// to allow and bad flags are errors.
func TestPolicySuggestFile(t *testing.T) {
	td := filepath.Join("..", "..", "policy", "suggest", "testdata")
	want, err := os.ReadFile(filepath.Join(td, "deathstar.suggested.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := runOK(t, "policy", "suggest", "--file", filepath.Join(td, "deathstar.hubble.json")); got != string(want) {
		t.Errorf("policy suggest --file =\n%s\nwant\n%s", got, want)
	}
	if got := runOK(t, "policy", "suggest", "--file", filepath.Join(td, "deathstar.hubble.json"), "--pod", "default/deathstar"); got != string(want) {
		t.Errorf("policy suggest --pod default/deathstar =\n%s\nwant\n%s", got, want)
	}
	empty := filepath.Join(t.TempDir(), "none.json")
	if err := os.WriteFile(empty, []byte(`{"flow":{"verdict":"FORWARDED","traffic_direction":"INGRESS"}}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"policy", "suggest", "--file", empty}, 1, "no AUDIT or policy-DROPPED flows to allow (read 1 flows)"},
		{[]string{"policy", "suggest", "--since", "yesterday", "--state-dir", t.TempDir()}, 2, `--since: "yesterday"`},
		{[]string{"policy", "suggest", "--file", empty + ".nope"}, 1, "no such file"},
		{[]string{"policy", "suggest", "--file", filepath.Join(td, "deathstar.hubble.json"), "--pod", "default/xwing"}, 1, "no AUDIT or policy-DROPPED flows"},
	} {
		var out, errb bytes.Buffer
		if code := run(tt.args, &out, &errb); code != tt.code || !strings.Contains(errb.String(), tt.msg) {
			t.Errorf("ward %q = %d, %q; want %d and %q", tt.args, code, errb.String(), tt.code, tt.msg)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 2, 22, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"5m":                   now.Add(-5 * time.Minute),
		"2026-12-02T21:00:00Z": now.Add(-time.Hour),
	} {
		if got, err := parseSince(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}
