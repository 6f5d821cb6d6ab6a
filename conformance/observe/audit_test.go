package observe

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent/api"
	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/kafka"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestAuditMode is policy audit mode through wardd: with policyAuditMode
// the Star Wars L3/L4/L7 policy drops nothing — the xwing reaches both
// deathstars (AUDIT in BPF, an L3/L4 flow) and the tiefighter's PUT
// reaches the service (AUDIT at L7 with the HTTP fields, no 403) — and the
// mediabot's DNS query no rule allows is answered (AUDIT, not REFUSED). `ward
// endpoint config ID audit=off` on one deathstar makes it enforce (xwing
// dropped, PUT 403) while the other stays in audit, and after wardd
// restarts.
func TestAuditMode(t *testing.T) {
	hubble := testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	ward := buildWard(t)
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "deathstar-b", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}},
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot"}})
	testenv.RequireCommand(t, "dig")
	kd := n.Pods["kube-dns"]
	cdns.StartUnbound(t, cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
@ IN A 192.0.2.1
api IN A 192.0.2.2
`}, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "fqdn.yaml", mediabotPolicy)
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	n.Serve(t, "deathstar-b", deathstar.New(), ":80")
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "deathstar.yaml", string(b))
	n.Config.PolicyAuditMode = true
	n.Start(t, 47800, 9478)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(from, to, method, path string) string {
		return n.Curl(c, from, "-X", method, "-w", " %{http_code}", "http://"+n.Pods[to].IP.String()+path)
	}
	exploded := func(got string) bool {
		return strings.HasPrefix(got, "Panic: deathstar exploded") && strings.HasSuffix(got, " 500")
	}
	// Audit: the would-be 403 is not sent; the service answers.
	node.Eventually(t, "the tiefighter's PUT to reach the deathstar (audit)", func() bool {
		return exploded(curl("tiefighter", "deathstar", "PUT", "/v1/exhaust-port"))
	})
	for _, ds := range []string{"deathstar", "deathstar-b"} {
		if got := curl("xwing", ds, "GET", "/v1/healthz"); !strings.HasSuffix(got, " 200") {
			t.Errorf("xwing GET %s in audit mode = %q; want 200", ds, got)
		}
		if got := curl("tiefighter", ds, "POST", "/v1/request-landing"); got != "Ship landed 200" {
			t.Errorf("tiefighter POST %s = %q; want Ship landed 200", ds, got)
		}
	}

	server := "unix://" + filepath.Join(n.StateDir, "hubble.sock")
	observe := func(args ...string) []*hubbleFlow {
		t.Helper()
		out, err := exec.CommandContext(c, hubble, append([]string{"observe", "--server", server, "-o", "json", "--last", "1000"}, args...)...).Output()
		if err != nil {
			t.Fatalf("hubble observe %v: %v\n%s", args, err, stderrOf(err))
		}
		return parseFlows(t, out)
	}
	// github.test is outside the mediabot's DNS rules (*.github.test).
	if r := cdns.Dig(t, []string{"ip", "netns", "exec", n.Pods["mediabot"].NetNS}, netip.AddrPortFrom(kd.IP, 53), "github.test."); r.Status != "NOERROR" {
		t.Errorf("dig github.test in audit mode = %s; want NOERROR (the would-be REFUSED audited)\n%s", r.Status, r.Output)
	}

	var audits []*hubbleFlow
	var l3, l7, dns *hubbleFlow
	node.Eventually(t, "hubble observe --verdict AUDIT to show the L3/L4, the HTTP and the DNS would-be drops", func() bool {
		audits = observe("--verdict", "AUDIT")
		l3, l7, dns = nil, nil, nil
		for _, f := range audits {
			if f.Flow.L7 != nil && f.Flow.L7.DNS != nil && f.Flow.L7.DNS.Query == "github.test." && f.Flow.Source.PodName == "mediabot" {
				dns = f
			}
			if f.Flow.L7 == nil && f.Flow.Source.PodName == "xwing" && f.Flow.Destination.PodName == "deathstar" {
				l3 = f
			}
			if f.Flow.L7 != nil && f.Flow.L7.HTTP != nil && f.Flow.L7.HTTP.Method == "PUT" {
				l7 = f
			}
		}
		return l3 != nil && l7 != nil && dns != nil
	})
	if dns.Flow.Direction != "EGRESS" || dns.Flow.Destination.PodName != "kube-dns" {
		t.Errorf("DNS audit = %s; want the mediabot's EGRESS query to kube-dns", dns)
	}
	if f := l3.Flow; f.Type != "L3_L4" || f.Direction != "INGRESS" || f.L4.TCP == nil || f.L4.TCP.DestinationPort != 80 || !contains(f.Source.Labels, "k8s:class=xwing") {
		t.Errorf("L3/L4 audit = %s; want the xwing's INGRESS TCP :80 flow", l3)
	}
	if h := l7.Flow.L7.HTTP; !strings.HasSuffix(h.URL, "/v1/exhaust-port") || h.Code == 403 || l7.Flow.Source.PodName != "tiefighter" {
		t.Errorf("L7 audit = %s; want the tiefighter's PUT /v1/exhaust-port, not answered 403", l7)
	}
	// Audit mode lets policy's drops through; the datapath's other drops
	// (an IPv6 extension header of the pods' own MLD reports) stay.
	for _, f := range observe("--verdict", "DROPPED") {
		if f.Flow.L7 != nil || f.Flow.DropReason == "POLICY_DENIED" {
			t.Errorf("in audit mode policy dropped a flow: %s", f)
		}
	}

	// One deathstar enforces; the other stays in audit.
	id := endpointID(t, n, "deathstar")
	out, err := exec.CommandContext(c, ward, "endpoint", "config", strconv.FormatUint(id, 10), "audit=off", "--state-dir", n.StateDir).Output()
	if err != nil {
		t.Fatalf("ward endpoint config: %v\n%s", err, stderrOf(err))
	}
	if want := "endpoint " + strconv.FormatUint(id, 10) + " (deathstar): audit=off\n"; string(out) != want {
		t.Errorf("ward endpoint config = %q; want %q", out, want)
	}
	node.Eventually(t, "the deathstar to enforce at L7", func() bool {
		return curl("tiefighter", "deathstar", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("xwing", "deathstar", "GET", "/v1/healthz"); got != "error" {
		t.Errorf("xwing GET deathstar after audit=off = %q; want dropped", got)
	}
	if got := curl("xwing", "deathstar-b", "GET", "/v1/healthz"); !strings.HasSuffix(got, " 200") {
		t.Errorf("xwing GET deathstar-b (still in audit) = %q; want 200", got)
	}
	if got := curl("tiefighter", "deathstar-b", "PUT", "/v1/exhaust-port"); !exploded(got) {
		t.Errorf("tiefighter PUT deathstar-b (still in audit) = %q; want the service's answer", got)
	}
	for _, e := range n.Agent.Status().Endpoints {
		if want := e.Name != "deathstar"; e.Audit != want {
			t.Errorf("status: endpoint %s audit = %v; want %v", e.Name, e.Audit, want)
		}
	}
	node.Eventually(t, "hubble observe to show the xwing's drop at the enforcing deathstar", func() bool {
		for _, f := range observe("--verdict", "DROPPED", "--from-label", "class=xwing") {
			if f.Flow.L7 == nil && f.Flow.Destination.PodName == "deathstar" && f.Flow.DropReason == "POLICY_DENIED" {
				return true
			}
		}
		return false
	})

	// wardd restarts: the override comes back with the endpoint (the
	// deathstar still enforces, the other still audits).
	n.Stop(t)
	n.Start(t, 47800, 9478)
	for _, e := range n.Agent.Status().Endpoints {
		if want := e.Name != "deathstar"; e.Audit != want {
			t.Errorf("after a restart: endpoint %s audit = %v; want %v", e.Name, e.Audit, want)
		}
	}
	if got := curl("tiefighter", "deathstar", "PUT", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("tiefighter PUT deathstar after a restart = %q; want Access denied 403 (audit=off kept)", got)
	}
	if got := curl("xwing", "deathstar", "GET", "/v1/healthz"); got != "error" {
		t.Errorf("xwing GET deathstar after a restart = %q; want dropped (audit=off kept)", got)
	}
	if got := curl("xwing", "deathstar-b", "GET", "/v1/healthz"); !strings.HasSuffix(got, " 200") {
		t.Errorf("xwing GET deathstar-b after a restart = %q; want 200 (still in audit)", got)
	}
}

// endpointID is the agent's id of a local endpoint.
func endpointID(t *testing.T, n *node.Node, name string) uint64 {
	t.Helper()
	var eps []api.Endpoint
	if n.Agent != nil {
		eps = n.Agent.Status().Endpoints
	}
	for _, e := range eps {
		if e.Name == name {
			return e.ID
		}
	}
	t.Fatalf("no endpoint %s in %+v", name, eps)
	return 0
}

// The seed's Kafka tutorial as the clients' egress policies (as in
// conformance/datapath TestWarddEgressKafka): the outpost may only
// consume empire-announce.
const outpostKafkaPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: empire-outpost-kafka
spec:
  endpointSelector:
    matchLabels: {app: empire-outpost}
  egress:
  - toEndpoints:
    - matchLabels: {app: kafka}
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: consume, topic: empire-announce}
`

// TestAuditModeKafka: in audit mode ward.kafka passes the outpost's
// produce its rules deny to the real broker (the record is written, no
// authorization error from ward) and records it AUDIT with the Kafka
// fields; after `ward endpoint config ID audit=off` the same produce gets
// ward's authorization error.
func TestAuditModeKafka(t *testing.T) {
	hubble := testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	kcat := testenv.RequireCommand(t, "kcat")
	ward := buildWard(t)
	n := node.New(t,
		node.PodSpec{Name: "kafka", Labels: map[string]string{"app": "kafka"}},
		node.PodSpec{Name: "empire-outpost", Labels: map[string]string{"app": "empire-outpost"}})
	kp := n.Pods["kafka"]
	addr := net.JoinHostPort(kp.IP.String(), "9092")
	broker := kafka.StartBroker(t, kafka.BrokerConfig{Advertise: map[string]string{"POD": addr}, Topics: []string{"empire-announce"}})
	ln, err := kp.Listen("tcp", ":9092")
	if err != nil {
		t.Fatal(err)
	}
	forwardTo(t, ln, broker.ListenerAddr("POD"))
	n.WritePolicy(t, "kafka.yaml", outpostKafkaPolicy)
	n.Config.PolicyAuditMode = true
	n.Start(t, 47900, 9479)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	kc := func(stdin string, args ...string) (string, error) {
		cmd := n.Pods["empire-outpost"].Command(c, kcat, append([]string{"-b", addr, "-m", "15"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := kc("Vader Booed at Empire Karaoke Party\n", "-P", "-t", "empire-announce"); err != nil {
		t.Fatalf("outpost produce in audit mode: %v\n%s\nbroker log:\n%s", err, out, broker.LogTail())
	}
	if out, err := kc("", "-C", "-t", "empire-announce", "-o", "beginning", "-c", "1", "-e"); err != nil || !strings.Contains(out, "Karaoke") {
		t.Errorf("outpost consume: %v\n%s; want the audited record written", err, out)
	}
	server := "unix://" + filepath.Join(n.StateDir, "hubble.sock")
	node.Eventually(t, "hubble observe to show the audited produce", func() bool {
		out, err := exec.CommandContext(c, hubble, "observe", "--server", server, "-o", "json", "--last", "1000", "--verdict", "AUDIT").Output()
		if err != nil {
			t.Fatalf("hubble observe: %v\n%s", err, stderrOf(err))
		}
		return bytes.Contains(out, []byte(`"api_key":"produce"`)) && bytes.Contains(out, []byte(`"topic":"empire-announce"`))
	})

	id := endpointID(t, n, "empire-outpost")
	if out, err := exec.CommandContext(c, ward, "endpoint", "config", strconv.FormatUint(id, 10), "audit=off", "--state-dir", n.StateDir).CombinedOutput(); err != nil {
		t.Fatalf("ward endpoint config: %v\n%s", err, out)
	}
	node.Eventually(t, "ward.kafka to deny the outpost's produce", func() bool {
		out, err := kc("Vader Booed again\n", "-P", "-t", "empire-announce")
		return err != nil && strings.Contains(strings.ToLower(out), "authoriz")
	})
}

// forwardTo accepts on ln (a pod's listener) and copies each connection to
// and from addr (the broker on the host's loopback) until the test ends.
func forwardTo(t *testing.T, ln net.Listener, addr string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	keep := func(cs ...net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			return false
		}
		for _, c := range cs {
			conns[c] = true
		}
		return true
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil || !keep(in, out) {
				in.Close()
				if out != nil {
					out.Close()
				}
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }() //nolint:errcheck // until either end closes
			go func() { defer wg.Done(); io.Copy(in, out); in.(*net.TCPConn).CloseWrite() }()  //nolint:errcheck // until either end closes
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
}
