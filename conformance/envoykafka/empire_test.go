// Package envoykafka plays the seed's Kafka tutorial (Cilium "Securing a
// Kafka Cluster") through the real Envoy with libward.so's ward.kafka
// network filter, against a real Apache Kafka broker, with kcat and the
// Kafka console tools as clients.
//
// Without the BPF redirect each client reaches Envoy directly: Envoy has
// one listener per client identity (the filter config's remote_identity),
// and the broker advertises that listener to the client, so every request
// of the client — bootstrap and partition leader alike — goes through it.
package envoykafka

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/kafka"
	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

const (
	announce = "empire-announce"
	plans    = "deathstar-plans"
)

type client struct {
	name string
	id   uint32
	port uint32
}

func rule(ids []uint32, rules ...l7.KafkaRule) *npds.PortNetworkPolicyRule {
	return &npds.PortNetworkPolicyRule{RemoteIdentities: ids, L7: npds.Kafka(rules...)}
}

func TestEmpireThroughEnvoy(t *testing.T) {
	kcat := kafka.NewKcat(t)
	console := kafka.NewConsole(t)
	s := stack.Start(t, stack.Options{})
	clients := map[string]*client{
		"HQ":      {name: "empire-hq", id: 1001},
		"BACKUP":  {name: "empire-backup", id: 1002},
		"OUTPOST": {name: "empire-outpost-8888", id: 1003},
		"ADMIN":   {name: "kafka-admin", id: 1004},
	}
	advertise := map[string]string{}
	for name, c := range clients {
		c.port = stack.FreePort(t)
		advertise[name] = fmt.Sprintf("127.0.0.1:%d", c.port)
	}
	broker := kafka.StartBroker(t, kafka.BrokerConfig{Advertise: advertise, Topics: []string{announce, plans}})

	// The tutorial's policy, resolved (kafka-sw-security-policy.yaml), plus
	// an apiKey rule for the admin client.
	policy := &npds.NetworkPolicy{Name: "kafka-broker", IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9092, Rules: []*npds.PortNetworkPolicyRule{
		rule([]uint32{1001}, l7.KafkaRule{Role: "produce", Topic: announce}, l7.KafkaRule{Role: "produce", Topic: plans}),
		rule([]uint32{1002}, l7.KafkaRule{Role: "consume", Topic: plans}),
		rule([]uint32{1003}, l7.KafkaRule{Role: "consume", Topic: announce}),
		rule([]uint32{1004}, l7.KafkaRule{APIKey: "apiversions"}, l7.KafkaRule{APIKey: "metadata"}, l7.KafkaRule{APIKey: "createtopics"}),
	}}}}
	var res xds.EnvoyResources
	for name, c := range clients {
		ap := strings.Split(broker.ListenerAddr(name), ":")
		var port int
		fmt.Sscan(ap[1], &port)
		cluster := "broker-" + strings.ToLower(name)
		res.Clusters = append(res.Clusters, xds.StaticCluster(cluster, ap[0], uint32(port), false))
		cfg, _ := json.Marshal(map[string]any{"xds_socket": s.Socket, "node": s.Node, "endpoint": "kafka-broker", "port": 9092,
			"remote_identity": c.id, "access_log": s.Dir + "/kafka-access.jsonl"})
		l, err := xds.TCPListener{Name: "kafka-" + strings.ToLower(name), Address: "127.0.0.1", Port: c.port, Cluster: cluster,
			Filters: []xds.ModuleFilter{{Name: "ward.kafka", Config: cfg}}}.Build()
		if err != nil {
			t.Fatal(err)
		}
		res.Listeners = append(res.Listeners, l)
	}
	s.PushEnvoy(t, res)
	s.PushPolicy(t, []*npds.NetworkPolicy{policy}, nil)
	addr := func(n string) string { return advertise[n] }
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// empire-hq produces to both topics (kcat, then the console producer).
	if r := kcat.Produce(ctx, addr("HQ"), announce, "Happy 40th Birthday to General Tagge\n"); r.Err != nil {
		t.Fatalf("hq kcat produce %s: %v\n%s", announce, r.Err, r.Stderr)
	}
	if r := console.Produce(ctx, addr("HQ"), plans, "deathstar reactor design v3\n"); r.Err != nil {
		t.Fatalf("hq console produce %s: %v\n%s", plans, r.Err, r.Stderr)
	}
	// The outpost consumes empire-announce.
	if r := kcat.Consume(ctx, addr("OUTPOST"), announce, 1); r.Err != nil || !strings.Contains(r.Stdout, "General Tagge") {
		t.Errorf("outpost consume %s: %v; stdout %q stderr %q", announce, r.Err, r.Stdout, r.Stderr)
	}
	// The outpost may not produce to empire-announce: an authorization
	// error, not a hang and not a dropped connection.
	r := kcat.Produce(ctx, addr("OUTPOST"), announce, "Vader Booed at Empire Karaoke Party\n")
	if r.Err == nil || !strings.Contains(strings.ToLower(r.Stderr), "authoriz") {
		t.Errorf("outpost produce: err %v stderr %q; want an authorization error", r.Err, r.Stderr)
	}
	// The outpost may not consume deathstar-plans.
	r = kcat.Consume(ctx, addr("OUTPOST"), plans, 1)
	if r.Err == nil || strings.Contains(r.Stdout, "reactor") {
		t.Errorf("outpost consume %s: err %v stdout %q; want refused", plans, r.Err, r.Stdout)
	}
	// empire-backup consumes deathstar-plans (console consumer, group).
	r = console.Consume(ctx, addr("BACKUP"), plans, 1)
	if r.Err != nil || !strings.Contains(r.Stdout, "reactor design") {
		t.Errorf("backup console consume %s: %v; stdout %q stderr %q", plans, r.Err, r.Stdout, tail(r.Stderr))
	}
	if n := s.Proc.Starts(); n != 1 {
		t.Errorf("envoy started %d times; want 1", n)
	}
}

func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}
