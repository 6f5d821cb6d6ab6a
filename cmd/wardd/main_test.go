package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "node.yaml")
	os.WriteFile(cfgPath, []byte("node: n1\npolicyDir: policies\nmode: always\n"), 0o600)
	cfg, lvl, err := parseFlags([]string{"--config", cfgPath, "--state-dir", "/tmp/s", "--no-envoy", "--envoy-external", "--log-level", "debug", "--concurrency", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node != "n1" || cfg.PolicyDir != filepath.Join(dir, "policies") || cfg.Mode != "always" {
		t.Errorf("config = %+v; want node n1, policyDir relative to the file, mode always", cfg)
	}
	if cfg, _, err := parseFlags([]string{"--config", cfgPath, "--node", "worker-1"}); err != nil || cfg.Node != "worker-1" {
		t.Errorf("--node worker-1: node %q, %v; want the flag to override the config's n1", cfg.Node, err)
	}
	if cfg.StateDir != "/tmp/s" || !cfg.Envoy.Disabled || !cfg.Envoy.External || cfg.Envoy.Concurrency != 2 || lvl.String() != "DEBUG" {
		t.Errorf("flags = %+v %v; want state dir, no envoy, external envoy, concurrency 2, debug", cfg, lvl)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("node: n1\nendpoints:\n- name: a\n  ips: [not-an-ip]\nlisteners:\n- name: l\n  kind: udp\n  address: 127.0.0.1\n  port: 1\n  upstream: 127.0.0.1:2\n"), 0o600)
	unknown := filepath.Join(dir, "unknown.yaml")
	os.WriteFile(unknown, []byte("nodee: n1\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{name: "log level", args: []string{"--log-level", "loud"}, want: []string{"--log-level"}},
		{name: "field paths", args: []string{"--config", bad}, want: []string{"endpoints[0].id is required", "endpoints[0].ips[0]", `listeners[0].kind "udp"`}},
		{name: "unknown field", args: []string{"--config", unknown}, want: []string{`unknown field "nodee"`}},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "nope.yaml")}, want: []string{"nope.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseFlags(tc.args)
			if err == nil {
				t.Fatalf("parseFlags(%q) = nil error; want %q", tc.args, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("parseFlags(%q) = %v; want it to contain %q", tc.args, err, w)
				}
			}
		})
	}
}
