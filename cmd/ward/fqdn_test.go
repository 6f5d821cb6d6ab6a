package main

import (
	"bytes"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dnsproxy "github.com/wardproxy/ward/filters/dns"
)

func writeFQDNState(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fqdn.json")
	now := time.Now()
	st := &dnsproxy.State{
		Version:   dnsproxy.StateVersion,
		Saved:     now,
		Selectors: []string{"matchName:api.github.test", "matchPattern:*.github.test"},
		Entries: []dnsproxy.CacheEntry{
			{Endpoint: 7, Name: "api.github.test", IP: netip.MustParseAddr("192.0.2.1"), Expires: now.Add(60 * time.Second), Seen: now},
			{Endpoint: 7, Name: "api.github.test", IP: netip.MustParseAddr("192.0.2.2"), Expires: now.Add(60 * time.Second), Seen: now},
			{Endpoint: 7, Name: "support.github.test", IP: netip.MustParseAddr("192.0.2.10"), Expires: now.Add(-time.Second), Seen: now, Zombie: true},
			{Endpoint: 9, Name: "other.test", IP: netip.MustParseAddr("198.51.100.1"), Expires: now.Add(time.Hour), Seen: now},
		},
		IPs: []dnsproxy.IPState{
			{IP: netip.MustParseAddr("192.0.2.1"), Identity: 16777217, Selectors: []string{"matchName:api.github.test", "matchPattern:*.github.test"}},
			{IP: netip.MustParseAddr("192.0.2.2"), Identity: 16777217, Selectors: []string{"matchName:api.github.test", "matchPattern:*.github.test"}},
			{IP: netip.MustParseAddr("192.0.2.10"), Identity: 16777218, Selectors: []string{"matchPattern:*.github.test"}},
		},
	}
	if err := dnsproxy.WriteState(path, st); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFQDNCommands(t *testing.T) {
	path := writeFQDNState(t)
	tests := []struct {
		name    string
		args    []string
		want    []string
		notWant []string
		code    int
	}{
		{
			name: "cache list",
			args: []string{"fqdn", "cache", "list", "--state", path},
			want: []string{"ENDPOINT", "7  ", "lookup", "api.github.test", "192.0.2.1,192.0.2.2", "connection", "support.github.test", "other.test"},
		},
		{
			name:    "cache list one endpoint and name",
			args:    []string{"fqdn", "cache", "list", "--state", path, "--endpoint", "7", "--name", "API.github.test."},
			want:    []string{"api.github.test"},
			notWant: []string{"support.github.test", "other.test"},
		},
		{
			name: "cache list json",
			args: []string{"fqdn", "cache", "list", "--state", path, "-o", "json"},
			want: []string{`"source": "connection"`, `"ttlLeft": 60`},
		},
		{
			name: "names",
			args: []string{"fqdn", "names", "--state", path},
			want: []string{"SELECTOR", "matchName:api.github.test", "16777217", "matchPattern:*.github.test", "api.github.test,support.github.test", "16777217,16777218"},
		},
		{name: "missing state", args: []string{"fqdn", "names", "--state", path + ".nope"}, code: 1},
		{name: "unknown subcommand", args: []string{"fqdn", "bogus"}, code: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != tt.code {
				t.Fatalf("run(%q) = %d; want %d\n%s%s", tt.args, code, tt.code, out.String(), errb.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("run(%q) output lacks %q:\n%s", tt.args, w, out.String())
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("run(%q) output has %q:\n%s", tt.args, w, out.String())
				}
			}
		})
	}
}
