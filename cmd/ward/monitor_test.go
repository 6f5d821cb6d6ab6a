package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/monitor"
)

type onePod struct{}

func (onePod) Describe(ip netip.Addr, id uint32) monitor.EndpointInfo {
	if ip.String() == "10.0.0.2" {
		return monitor.EndpointInfo{ID: 2, Identity: 1002, Namespace: "default", PodName: "tiefighter"}
	}
	return monitor.EndpointInfo{ID: 1, Identity: 1001, Namespace: "default", PodName: "deathstar"}
}

func TestMonitor(t *testing.T) {
	dir := t.TempDir()
	hub := monitor.NewHub("node1", 16, onePod{}, nil)
	s := &monitor.Server{Hub: hub, HubbleSocket: filepath.Join(dir, "hubble.sock")}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for _, m := range []string{"POST", "PUT"} {
		v := flow.Allowed
		if m == "PUT" {
			v = flow.Denied
		}
		hub.Emit(&flow.Record{Time: time.Now(), Direction: flow.Ingress, Verdict: v,
			Source: flow.Endpoint{IP: "10.0.0.2", Port: 40000}, Destination: flow.Endpoint{IP: "10.0.0.1", Port: 80},
			HTTP: &flow.HTTP{Method: m, Host: "deathstar", Path: "/v1/x", Rule: -1}})
	}

	var out, errb bytes.Buffer
	if rc := run([]string{"monitor", "--state-dir", dir, "--last", "5"}, &out, &errb); rc != 0 {
		t.Fatalf("ward monitor: rc %d: %s", rc, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "default/tiefighter:40000 (ID:1002) -> default/deathstar:80 (ID:1001) ingress http-request DROPPED (HTTP/1.1 PUT http://deathstar/v1/x") ||
		!strings.Contains(lines[0], "FORWARDED") {
		t.Errorf("ward monitor:\n%s", out.String())
	}

	out.Reset()
	if rc := run([]string{"monitor", "--state-dir", dir, "--verdict", "dropped", "-o", "json"}, &out, &errb); rc != 0 {
		t.Fatalf("ward monitor -o json: rc %d: %s", rc, errb.String())
	}
	var f struct {
		Verdict string `json:"verdict"`
		L7      struct {
			HTTP struct{ Method string } `json:"http"`
		} `json:"l7"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &f); err != nil || f.Verdict != "DROPPED" || f.L7.HTTP.Method != "PUT" {
		t.Errorf("ward monitor --verdict dropped -o json = %s (%v)", out.String(), err)
	}
	if rc := run([]string{"monitor", "--state-dir", t.TempDir()}, &out, &errb); rc != 1 {
		t.Errorf("ward monitor without wardd: rc %d; want 1", rc)
	}
}
