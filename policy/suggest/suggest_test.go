package suggest

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardproxy/ward/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestFromSavedHubbleJSON: the `hubble observe -o json` output of the
// end-to-end round trip (conformance/observe TestPolicySuggest, saved with
// WARD_SAVE_HUBBLE_JSON) gives the golden policy: the tiefighter's PUT
// dropped at L7 as an HTTP rule, the xwing's connection dropped in BPF as
// an L3/L4 rule, the drops for other reasons ignored.
func TestFromSavedHubbleJSON(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "deathstar.hubble.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flows, err := ReadHubbleJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) < 3 {
		t.Fatalf("read %d flows; want the saved ones", len(flows))
	}
	ps, err := Suggest(flows)
	if err != nil {
		t.Fatal(err)
	}
	got, err := YAML(ps)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "deathstar.suggested.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("suggestion differs from %s (-update rewrites it):\n%s", golden, got)
	}
}

func ep(ns string, labels ...string) *flowpb.Endpoint {
	if ns != "" {
		labels = append(labels, "k8s:io.kubernetes.pod.namespace="+ns)
	}
	return &flowpb.Endpoint{Namespace: ns, Labels: labels}
}

func tcp(port uint32) *flowpb.Layer4 {
	return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: port}}}
}

func udp(port uint32) *flowpb.Layer4 {
	return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 40000, DestinationPort: port}}}
}

var (
	app    = ep("shop", "k8s:app=frontend", "k8s:pod-template-hash=abc123", "k8s:io.cilium.k8s.policy.serviceaccount=default")
	db     = ep("shop", "k8s:app=db")
	other  = ep("tools", "k8s:app=debug")
	world  = &flowpb.Endpoint{Labels: []string{"reserved:world"}}
	host   = &flowpb.Endpoint{Labels: []string{"reserved:host"}}
	cidr   = &flowpb.Endpoint{Labels: []string{"cidr:192.0.2.0/24", "reserved:world"}}
	kdns   = ep("kube-system", "k8s:k8s-app=kube-dns")
	broker = ep("shop", "k8s:app=kafka")
)

func flow(dir flowpb.TrafficDirection, v flowpb.Verdict, src, dst *flowpb.Endpoint, l4 *flowpb.Layer4) *flowpb.Flow {
	f := &flowpb.Flow{TrafficDirection: dir, Verdict: v, Source: src, Destination: dst, L4: l4,
		IP: &flowpb.IP{Source: "10.0.0.1", Destination: "203.0.113.7"}, IsReply: wrapperspb.Bool(false)}
	if v == flowpb.Verdict_DROPPED {
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
	}
	return f
}

const (
	in  = flowpb.TrafficDirection_INGRESS
	out = flowpb.TrafficDirection_EGRESS
)

func TestSuggest(t *testing.T) {
	audit, dropped := flowpb.Verdict_AUDIT, flowpb.Verdict_DROPPED
	httpFlow := flow(in, dropped, app, db, tcp(8080))
	httpFlow.DropReasonDesc = flowpb.DropReason_DROP_REASON_UNKNOWN
	httpFlow.L7 = &flowpb.Layer7{Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Method: "GET", Url: "http://db:8080/v1/items.json?page=2"}}}
	dnsFlow := flow(out, dropped, app, kdns, udp(53))
	dnsFlow.L7 = &flowpb.Layer7{Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{Query: "api.example.com."}}}
	kafkaFlow := flow(out, audit, app, broker, tcp(9092))
	//lint:ignore SA1019 ward and Cilium fill l7.kafka
	kafkaFlow.L7 = &flowpb.Layer7{Record: &flowpb.Layer7_Kafka{Kafka: &flowpb.Kafka{ApiKey: "produce", Topic: "orders"}}}
	reply := flow(in, dropped, app, db, tcp(5432))
	reply.IsReply = wrapperspb.Bool(true)
	otherReason := flow(in, dropped, app, db, tcp(6379))
	otherReason.DropReasonDesc = flowpb.DropReason_CT_MAP_INSERTION_FAILED
	forwarded := flow(in, flowpb.Verdict_FORWARDED, app, db, tcp(7000))
	icmp := flow(in, audit, host, app, &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: 8}}})
	node := &flowpb.Endpoint{Labels: []string{"k8s:node-access=ssh", "reserved:host"}}
	hostHTTP := flow(in, audit, app, node, tcp(8080))
	hostHTTP.L7 = &flowpb.Layer7{Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Method: "GET", Url: "http://node/"}}}

	tests := []struct {
		name    string
		flows   []*flowpb.Flow
		want    []string // substrings of the YAML, in order
		notWant []string
	}{
		{
			name:  "ingress L3/L4 audit between pods, identity labels only",
			flows: []*flowpb.Flow{flow(in, audit, app, db, tcp(5432)), flow(in, audit, app, db, tcp(5432))},
			want: []string{"name: db-suggested", "namespace: shop", "endpointSelector:", "app: db", "ingress:",
				"fromEndpoints:", "app: frontend", `port: "5432"`, "protocol: TCP"},
			notWant: []string{"pod-template-hash", "serviceaccount", "egress:", "rules:"},
		},
		{
			name:  "L7 HTTP drop: method and anchored literal path",
			flows: []*flowpb.Flow{httpFlow},
			want:  []string{`port: "8080"`, "rules:", "http:", "method: GET", `path: /v1/items\.json`},
		},
		{
			name:  "egress: DNS names, Kafka topics, a world address as toCIDR",
			flows: []*flowpb.Flow{dnsFlow, kafkaFlow, flow(out, dropped, app, world, tcp(443))},
			want: []string{"name: frontend-suggested", "egress:", "toEndpoints:", "app: kafka", `port: "9092"`, "apiKey: produce", "topic: orders",
				"k8s-app: kube-dns", "k8s:io.kubernetes.pod.namespace: kube-system", `port: "53"`, "protocol: UDP", "dns:", "matchName: api.example.com",
				"toCIDR:", "203.0.113.7/32", `port: "443"`},
			notWant: []string{"ingress:"},
		},
		{
			name:  "ingress from world, a CIDR identity, the host without ports (ICMP)",
			flows: []*flowpb.Flow{flow(in, dropped, world, app, tcp(80)), flow(in, dropped, cidr, app, tcp(80)), icmp},
			want:  []string{"fromEntities:", "host", "fromEntities:", "world", `port: "80"`, "fromCIDR:", "192.0.2.0/24", `port: "80"`},
		},
		{
			name:  "the node itself: a clusterwide host policy selecting its labels, peers with their namespace, no L7",
			flows: []*flowpb.Flow{flow(in, audit, world, node, tcp(22)), flow(in, audit, app, node, tcp(6443)), hostHTTP},
			want: []string{"kind: CiliumClusterwideNetworkPolicy", "name: host-suggested", "ingress:", "fromEndpoints:", "app: frontend",
				"k8s:io.kubernetes.pod.namespace: shop", `port: "6443"`, `port: "8080"`, "fromEntities:", "world", `port: "22"`,
				"nodeSelector:", "node-access: ssh"},
			notWant: []string{"namespace: default", "endpointSelector", "rules:", "method:"},
		},
		{
			name:  "a peer of another namespace is selected with its namespace",
			flows: []*flowpb.Flow{flow(in, dropped, other, db, tcp(5432))},
			want:  []string{"app: debug", "k8s:io.kubernetes.pod.namespace: tools"},
		},
		{
			name:  "replies, other drop reasons and forwarded flows are not verdicts to allow",
			flows: []*flowpb.Flow{reply, otherReason, forwarded},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Suggest(tt.flows)
			if err != nil {
				t.Fatal(err)
			}
			got, err := YAML(ps)
			if err != nil {
				t.Fatal(err)
			}
			if len(tt.want) == 0 && len(got) != 0 {
				t.Fatalf("Suggest = %s; want nothing", got)
			}
			rest := string(got)
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("suggestion lacks %q (in order):\n%s", w, got)
				}
				rest = rest[i+len(w):]
			}
			for _, w := range tt.notWant {
				if strings.Contains(string(got), w) {
					t.Errorf("suggestion has %q:\n%s", w, got)
				}
			}
			if len(got) > 0 {
				if _, err := policy.Parse("s.yaml", got); err != nil {
					t.Errorf("suggestion does not parse: %v", err)
				}
			}
		})
	}
}

func TestReadHubbleJSONErrors(t *testing.T) {
	if _, err := ReadHubbleJSON(strings.NewReader("{\"flow\": {\"verdict\": 7}}\nnot json\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("ReadHubbleJSON(bad line 2) = %v; want an error naming line 2", err)
	}
	fs, err := ReadHubbleJSON(strings.NewReader("\n{\"lost_events\": {\"num_events_lost\": 3}}\n"))
	if err != nil || len(fs) != 0 {
		t.Errorf("ReadHubbleJSON(lost events) = %v, %v; want none", fs, err)
	}
}

func TestForPod(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "deathstar.hubble.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flows, err := ReadHubbleJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	for pod, want := range map[string]int{"default/deathstar": 3, "deathstar": 3, "other/deathstar": 0, "default/xwing": 0} {
		if got := len(ForPod(flows, pod)); got != want {
			t.Errorf("ForPod(%q) kept %d flows; want %d", pod, got, want)
		}
	}
}
