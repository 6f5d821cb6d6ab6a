package dns

import (
	"slices"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/flow"
)

// auditRules is a RuleSource whose endpoints are in policy audit mode.
type auditRules struct{ staticRules }

func (auditRules) DNSAudit(uint64) bool { return true }

// TestProxyAudit: in audit mode a query no rule allows is forwarded and
// answered (not REFUSED) and recorded as audited with its DNS fields; an
// allowed one stays allowed.
func TestProxyAudit(t *testing.T) {
	up := startUpstream(t)
	h := startProxy(t, up, harnessOpts{rules: mediabot, audit: true})
	r := query(t, "udp", h.p.UDPAddr(), "support.github.test.", mdns.TypeA)
	if r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("allowed query rcode = %s; want NOERROR", mdns.RcodeToString[r.Rcode])
	}
	query(t, "udp", h.p.UDPAddr(), "api.github.test.", mdns.TypeA)
	// A name outside the rules: the upstream's answer, not REFUSED.
	r = query(t, "udp", h.p.UDPAddr(), "github.test.", mdns.TypeA)
	if r.Rcode == mdns.RcodeRefused {
		t.Fatalf("audited query answered REFUSED; want the upstream's answer")
	}
	recs := h.flows.all()
	if len(recs) != 3 {
		t.Fatalf("flow records = %d; want 3", len(recs))
	}
	got := []flow.Verdict{recs[0].Verdict, recs[1].Verdict, recs[2].Verdict}
	if want := []flow.Verdict{flow.Allowed, flow.Allowed, flow.Audited}; !slices.Equal(got, want) {
		t.Errorf("verdicts = %v; want %v", got, want)
	}
	if d := recs[2].DNS; d == nil || d.Query != "github.test." || recs[2].Reason == "" {
		t.Errorf("audited record = %+v %+v; want the query and a reason", recs[2], d)
	}
}
