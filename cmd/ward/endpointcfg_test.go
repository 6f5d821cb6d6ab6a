package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproxy/ward/agent/api"
)

func TestParseEndpointOptions(t *testing.T) {
	for _, tt := range []struct {
		name    string
		opts    []string
		audit   *bool
		wantErr bool
	}{
		{name: "on", opts: []string{"audit=on"}, audit: ptr(true)},
		{name: "off", opts: []string{"audit=off"}, audit: ptr(false)},
		{name: "cilium spelling", opts: []string{"PolicyAuditMode=Enabled"}, audit: ptr(true)},
		{name: "bad value", opts: []string{"audit=maybe"}, wantErr: true},
		{name: "unknown option", opts: []string{"Debug=on"}, wantErr: true},
		{name: "no value", opts: []string{"audit"}, wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseEndpointOptions(tt.opts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseEndpointOptions(%q) error = %v; want error %v", tt.opts, err, tt.wantErr)
			}
			if !tt.wantErr && (c.Audit == nil || *c.Audit != *tt.audit) {
				t.Errorf("parseEndpointOptions(%q).Audit = %v; want %v", tt.opts, c.Audit, *tt.audit)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestEndpointConfigCommand runs the command against a status socket that
// answers as wardd does.
func TestEndpointConfigCommand(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, api.Socket))
	if err != nil {
		t.Fatal(err)
	}
	var got []api.EndpointConfig
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.EndpointConfigPath, func(w http.ResponseWriter, r *http.Request) {
		var c api.EndpointConfig
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.PathValue("id") != "7" {
			http.Error(w, "endpoint "+r.PathValue("id")+": no such local endpoint", http.StatusNotFound)
			return
		}
		got = append(got, c)
		_ = json.NewEncoder(w).Encode(api.Endpoint{ID: 7, Name: "deathstar", Audit: *c.Audit})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	var out, errb bytes.Buffer
	if code := run([]string{"endpoint", "config", "7", "audit=on", "--state-dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if out.String() != "endpoint 7 (deathstar): audit=on\n" || len(got) != 1 || !*got[0].Audit {
		t.Errorf("output %q, requests %v; want audit=on sent and shown", out.String(), got)
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"endpoint", "config", "8", "audit=off", "--state-dir", dir}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no such local endpoint") {
		t.Errorf("unknown endpoint: exit %d, stderr %q; want 1 and the agent's error", code, errb.String())
	}
}
