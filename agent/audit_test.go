package agent

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/monitor"
)

// TestEndpointAudit: the node's policyAuditMode is every endpoint's
// default; setAudit overrides it for one endpoint only, and the override
// survives that endpoint's re-registration (a label change).
func TestEndpointAudit(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	eps := []Endpoint{
		{Name: "a", ID: 1, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"app": "a"}},
		{Name: "b", ID: 2, IPs: []string{"10.0.0.2"}, Labels: map[string]string{"app": "b"}},
		{Name: "r", ID: 3, IPs: []string{"10.0.0.3"}, Labels: map[string]string{"app": "r"}, Remote: true},
	}
	e, err := newEngine(&Config{PolicyAuditMode: true, Endpoints: eps}, log)
	if err != nil {
		t.Fatal(err)
	}
	audit := func(id uint64) bool {
		t.Helper()
		p, ok := e.repo.Snapshot().Endpoint(id)
		if !ok {
			t.Fatalf("endpoint %d not resolved", id)
		}
		return p.Audit
	}
	if !audit(1) || !audit(2) {
		t.Fatalf("policyAuditMode: audit = %v, %v; want both on", audit(1), audit(2))
	}
	before, _ := e.repo.Snapshot().Endpoint(2)
	if err := e.setAudit(1, false); err != nil {
		t.Fatal(err)
	}
	if audit(1) || !audit(2) {
		t.Errorf("after setAudit(1, off): audit = %v, %v; want off, on", audit(1), audit(2))
	}
	if after, _ := e.repo.Snapshot().Endpoint(2); after != before {
		t.Error("setAudit(1) changed endpoint 2's resolved policy; want it untouched")
	}
	// A label change registers endpoint 1 again: the override stays.
	eps[0].Labels = map[string]string{"app": "a2"}
	if _, err := e.setEndpoints(sourceConfig, eps, "endpoints"); err != nil {
		t.Fatal(err)
	}
	if audit(1) {
		t.Error("override lost when the endpoint was registered again")
	}
	if err := e.setAudit(1, true); err != nil || !audit(1) {
		t.Errorf("setAudit(1, on) = %v, audit %v; want nil, on", err, audit(1))
	}
	for _, id := range []uint64{3, 99} {
		if err := e.setAudit(id, true); !errors.Is(err, errNoEndpoint) {
			t.Errorf("setAudit(%d) = %v; want errNoEndpoint", id, err)
		}
	}
}

// TestEndpointAuditRestored: an override is saved in the state directory
// and restored by the next wardd (the same endpoint comes back with it),
// dropped when its endpoint leaves; a refused override changes nothing; a
// file wardd cannot read stops it with an error naming the file.
func TestEndpointAuditRestored(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	eps := []Endpoint{
		{Name: "a", ID: 1, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"app": "a"}},
		{Name: "b", ID: 2, IPs: []string{"10.0.0.2"}, Labels: map[string]string{"app": "b"}},
	}
	start := func() *engine {
		t.Helper()
		e, err := newEngine(&Config{StateDir: dir, Endpoints: eps}, log)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	audit := func(e *engine, id uint64) bool {
		t.Helper()
		p, ok := e.repo.Snapshot().Endpoint(id)
		if !ok {
			t.Fatalf("endpoint %d not resolved", id)
		}
		return p.Audit
	}
	e := start()
	if err := e.setAudit(2, true); err != nil {
		t.Fatal(err)
	}
	e = start() // wardd restarted
	if audit(e, 1) || !audit(e, 2) {
		t.Fatalf("after a restart: audit = %v, %v; want off, on (the override restored)", audit(e, 1), audit(e, 2))
	}
	// Endpoint 2 leaves: its override is forgotten, on disk too, so an
	// endpoint given its id later starts with the node's default.
	if _, err := e.setEndpoints(sourceConfig, eps[:1], "endpoints"); err != nil {
		t.Fatal(err)
	}
	e = start()
	if audit(e, 2) {
		t.Error("an endpoint that left and came back kept its old override; want the default")
	}

	// An override that cannot be saved (its temporary file's name taken
	// by a directory: even root fails) is refused and not applied.
	tmp := filepath.Join(dir, auditFile+".tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := e.setAudit(1, true); err == nil || audit(e, 1) {
		t.Errorf("setAudit with the file unwritable = %v, audit %v; want an error, off", err, audit(e, 1))
	}
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := e.setAudit(1, true); err != nil || !audit(e, 1) {
		t.Errorf("setAudit once writable = %v, audit %v; want nil, on", err, audit(e, 1))
	}

	if err := os.WriteFile(filepath.Join(dir, auditFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newEngine(&Config{StateDir: dir, Endpoints: eps}, log); err == nil || !strings.Contains(err.Error(), auditFile) {
		t.Errorf("a corrupt %s: newEngine = %v; want an error naming it", auditFile, err)
	}
}

// TestBPFRecord: datapath events become flow records Hubble shows with
// the right verdict, drop reason, event type and endpoints.
func TestBPFRecord(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	lookup := func(a netip.Addr) (uint32, bool) {
		if a == dst {
			return 5002, true
		}
		return 0, false
	}
	now := time.Unix(1700000000, 0)
	base := redirect.Event{Proto: 6, Source: netip.AddrPortFrom(src, 40000), Destination: netip.AddrPortFrom(dst, 80), SourceIdentity: 5001, Endpoint: 2}
	tests := []struct {
		name        string
		ev          func(e redirect.Event) redirect.Event
		verdict     flow.Verdict
		reason      string
		hubble      flowpb.Verdict
		dropReason  flowpb.DropReason
		eventType   int32
		direction   flowpb.TrafficDirection
		destination uint32
	}{
		{name: "policy drop", ev: func(e redirect.Event) redirect.Event {
			e.Kind, e.Reason, e.Verdict = redirect.EventDrop, redirect.ReasonPolicyDenied, redirect.Deny
			return e
		}, verdict: flow.Denied, reason: "POLICY_DENIED", hubble: flowpb.Verdict_DROPPED, dropReason: flowpb.DropReason_POLICY_DENIED, eventType: 1,
			direction: flowpb.TrafficDirection_INGRESS, destination: 5002},
		{name: "unknown l3", ev: func(e redirect.Event) redirect.Event {
			e.Kind, e.Reason, e.Verdict, e.Direction = redirect.EventDrop, redirect.ReasonUnknownL3, redirect.Deny, redirect.Egress
			return e
		}, verdict: flow.Denied, reason: "UNSUPPORTED_L3_PROTOCOL", hubble: flowpb.Verdict_DROPPED, dropReason: flowpb.DropReason_UNSUPPORTED_L3_PROTOCOL, eventType: 1,
			direction: flowpb.TrafficDirection_EGRESS, destination: 5002},
		{name: "audited", ev: func(e redirect.Event) redirect.Event {
			e.Kind, e.Reason, e.Verdict, e.Audit, e.DestinationIdentity = redirect.EventVerdict, redirect.ReasonAllowed, redirect.Allow, true, 7
			return e
		}, verdict: flow.Audited, reason: "audit mode: would be POLICY_DENIED", hubble: flowpb.Verdict_AUDIT, eventType: 5,
			direction: flowpb.TrafficDirection_INGRESS, destination: 7},
		{name: "redirected", ev: func(e redirect.Event) redirect.Event {
			e.Kind, e.Reason, e.Verdict, e.ProxyPort = redirect.EventVerdict, redirect.ReasonRedirected, redirect.Redirect, 15001
			return e
		}, verdict: flow.Allowed, reason: "redirected to proxy port 15001", hubble: flowpb.Verdict_FORWARDED, eventType: 5,
			direction: flowpb.TrafficDirection_INGRESS, destination: 5002},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := tc.ev(base)
			r := bpfRecord(&ev, now, lookup)
			if r.Verdict != tc.verdict || r.Reason != tc.reason || r.Proto != "l3l4" || r.L4 == nil || r.L4.Protocol != "TCP" {
				t.Errorf("bpfRecord = verdict %q reason %q proto %q l4 %+v; want %q %q l3l4 TCP", r.Verdict, r.Reason, r.Proto, r.L4, tc.verdict, tc.reason)
			}
			if r.Source.Identity != 5001 || r.Destination.Identity != tc.destination || r.Source.Port != 40000 || r.Destination.Port != 80 {
				t.Errorf("bpfRecord endpoints = %+v -> %+v; want identities 5001 -> %d, ports 40000 -> 80", r.Source, r.Destination, tc.destination)
			}
			f := monitor.Convert(r, "node", nil)
			if f.Verdict != tc.hubble || f.DropReasonDesc != tc.dropReason || f.EventType.GetType() != tc.eventType || f.TrafficDirection != tc.direction {
				t.Errorf("Convert = verdict %v drop reason %v event type %d direction %v; want %v %v %d %v",
					f.Verdict, f.DropReasonDesc, f.EventType.GetType(), f.TrafficDirection, tc.hubble, tc.dropReason, tc.eventType, tc.direction)
			}
			if f.GetL4().GetTCP().GetDestinationPort() != 80 || f.GetIP().GetSource() != src.String() {
				t.Errorf("Convert l4/ip = %v %v; want TCP dport 80 from %s", f.GetL4(), f.GetIP(), src)
			}
		})
	}
	// Dropped before parsing: no addresses, no L4.
	ev := redirect.Event{Kind: redirect.EventDrop, Reason: redirect.ReasonVLAN, Verdict: redirect.Deny}
	if r := bpfRecord(&ev, now, lookup); r.L4 != nil || r.Source.IP != "" || r.Reason != "VLAN_FILTERED" {
		t.Errorf("bpfRecord(unparsed) = %+v; want no L4, no addresses, VLAN_FILTERED", r)
	}
}
