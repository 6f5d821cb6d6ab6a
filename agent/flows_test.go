package agent

import (
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/proxylib/policyfilter"
)

// TestLoadConfigObserve: the monitor and metrics blocks; a metrics address
// off loopback, a negative capacity and unknown fields are refused.
func TestLoadConfigObserve(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, "monitor:\n  capacity: 100\nmetrics:\n  address: 127.0.0.1:9962\n"))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if c.Monitor.Capacity != 100 || c.Monitor.Disabled || c.Metrics.Address != "127.0.0.1:9962" {
		t.Errorf("monitor %+v metrics %+v", c.Monitor, c.Metrics)
	}
	for _, tc := range []struct{ body, want string }{
		{"metrics:\n  address: 0.0.0.0:9962\n", "metrics.address"},
		{"metrics:\n  address: 9962\n", "metrics.address"},
		{"monitor:\n  capacity: -1\n", "monitor.capacity"},
		{"monitor:\n  socket: /tmp/x\n", "unknown field"},
	} {
		if _, err := LoadConfig(writeConfig(t, tc.body)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadConfig(%q) = %v; want an error containing %q", tc.body, err, tc.want)
		}
	}
}

// TestFlowSocketConfig: the filters ship to the agent's flow socket unless
// the monitor is disabled.
func TestFlowSocketConfig(t *testing.T) {
	for _, disabled := range []bool{false, true} {
		a, err := New(Config{StateDir: t.TempDir(), Monitor: MonitorConfig{Disabled: disabled}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var c policyfilter.Config
		if err := json.Unmarshal(a.filterConfig(policyfilter.Config{}), &c); err != nil {
			t.Fatal(err)
		}
		want := filepath.Join(a.cfg.StateDir, "flows.sock")
		if disabled {
			want = ""
		}
		if c.FlowSocket != want || (a.Flows() == nil) != disabled {
			t.Errorf("disabled=%v: flow_socket %q, hub %v; want %q", disabled, c.FlowSocket, a.Flows(), want)
		}
	}
}

// TestDescriber: flows name local workloads with their namespace, endpoint
// id, identity and labels; other addresses get their identity's labels.
func TestDescriber(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Config{StateDir: dir, PolicyDir: dir, Endpoints: []Endpoint{
		{Name: "deathstar", ID: 7, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"class": "deathstar"}},
		{Name: "remote", ID: 8, IPs: []string{"10.0.1.1"}, Labels: map[string]string{"class": "remote"}, Namespace: "other", Remote: true},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.eng.publish(context.Background())
	d := describer{a}
	ds := d.Describe(netip.MustParseAddr("10.0.0.1"), 0)
	if ds.ID != 7 || ds.PodName != "deathstar" || ds.Namespace != "default" || ds.Identity == 0 || !hasLabel(ds.Labels, "k8s:class=deathstar") {
		t.Errorf("deathstar = %+v", ds)
	}
	rm := d.Describe(netip.MustParseAddr("10.0.1.1"), 0)
	if rm.ID != 0 || rm.PodName != "remote" || rm.Namespace != "other" || rm.Identity == 0 || rm.Identity == ds.Identity {
		t.Errorf("remote = %+v", rm)
	}
	w := d.Describe(netip.MustParseAddr("192.0.2.1"), 0)
	if w.Identity != uint32(policy.IdentityWorld) || !hasLabel(w.Labels, "reserved:world") {
		t.Errorf("world = %+v", w)
	}
}

func hasLabel(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
