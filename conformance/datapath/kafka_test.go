package datapath

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/kafka"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// The seed's Kafka tutorial (examples/kafka) turned around: the same
// rules, written as the clients' egress policies.
const empireEgressPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: empire-kafka-egress
specs:
- endpointSelector:
    matchLabels: {app: empire-hq}
  egress:
  - toEndpoints:
    - matchLabels: {app: kafka}
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: deathstar-plans}
        - {role: produce, topic: empire-announce}
- endpointSelector:
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

// TestWarddEgressKafka: kcat in the empire-hq and empire-outpost pods
// reaches the broker in the kafka pod through each client's own egress
// Kafka listener (BPF redirects the egress Kafka port there, ward.kafka
// applies the client's egress rules, the upstream connection carries the
// client's identity): hq produces to empire-announce, the outpost consumes
// it, and the outpost's produce gets the broker's authorization error from
// ward. Before the egress Kafka listeners these flows were dropped. The
// broker is a real KRaft broker (empireKafkaNode).
func TestWarddEgressKafka(t *testing.T) {
	kcat := testenv.RequireCommand(t, "kcat")
	n, addr, broker := empireKafkaNode(t)
	n.WritePolicy(t, "kafka.yaml", empireEgressPolicy)
	n.Start(t, 37200, 9702)

	c, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	run := kcatIn(c, n, kcat, addr)
	if out, err := run("empire-hq", "Happy 40th Birthday to General Tagge\n", "-P", "-t", "empire-announce"); err != nil {
		t.Fatalf("hq produce empire-announce: %v\n%s\nbroker log:\n%s", err, out, broker.LogTail())
	}
	if out, err := run("empire-outpost", "", "-C", "-t", "empire-announce", "-o", "beginning", "-c", "1", "-e"); err != nil || !strings.Contains(out, "General Tagge") {
		t.Errorf("outpost consume empire-announce: %v\n%s", err, out)
	}
	out, err := run("empire-outpost", "Vader Booed at Empire Karaoke Party\n", "-P", "-t", "empire-announce")
	if err == nil || !strings.Contains(strings.ToLower(out), "authoriz") {
		t.Errorf("outpost produce empire-announce: err %v, output %q; want an authorization error", err, out)
	}
}

// empireKafkaNode is a node with the kafka, empire-hq and empire-outpost
// pods and a real KRaft broker (conformance/kafka) on the host's loopback,
// put inside the kafka pod by a forwarder listening on the pod's address
// (addr): the broker advertises that address, so every connection of the
// clients (bootstrap and partition leader) goes pod to pod through the
// datapath.
func empireKafkaNode(t *testing.T) (n *node.Node, addr string, broker *kafka.Broker) {
	t.Helper()
	n = node.New(t,
		node.PodSpec{Name: "kafka", Labels: map[string]string{"app": "kafka"}},
		node.PodSpec{Name: "empire-hq", Labels: map[string]string{"app": "empire-hq"}},
		node.PodSpec{Name: "empire-outpost", Labels: map[string]string{"app": "empire-outpost"}})
	kp := n.Pods["kafka"]
	addr = net.JoinHostPort(kp.IP.String(), "9092")
	broker = kafka.StartBroker(t, kafka.BrokerConfig{Advertise: map[string]string{"POD": addr}, Topics: []string{"empire-announce", "deathstar-plans"}})
	ln, err := kp.Listen("tcp", ":9092")
	if err != nil {
		t.Fatal(err)
	}
	forward(t, ln, broker.ListenerAddr("POD"))
	return n, addr, broker
}

// kcatIn runs kcat (path) in a pod of n against the broker at addr, with
// stdin, and returns its combined output.
func kcatIn(c context.Context, n *node.Node, kcat, addr string) func(pod, stdin string, args ...string) (string, error) {
	return func(pod, stdin string, args ...string) (string, error) {
		cmd := n.Pods[pod].Command(c, kcat, append([]string{"-b", addr, "-m", "15"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

// forward accepts on ln (a pod's listener) and copies each connection to
// and from addr (the broker's listener on the host's loopback) until the
// test ends.
func forward(t *testing.T, ln net.Listener, addr string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			c.Close()
			return false
		}
		conns[c] = struct{}{}
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
			if err != nil {
				in.Close()
				continue
			}
			if !track(in) || !track(out) {
				in.Close()
				out.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(in, out); in.(*net.TCPConn).CloseWrite() }()
		}
	}()
	t.Cleanup(func() {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Error(err)
		}
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
}

// TestWarddEgressAndIngressKafka: the clients' egress Kafka rules and the
// broker's ingress Kafka rules both apply when the broker is a pod on the
// same node. The egress listener's upstream cannot go through the ingress
// proxy (it would see the node's address, not the client), so ward.kafka
// applies the broker's ingress rules for the client on the egress listener
// and the datapath passes its upstream (MarkIngressChecked). Before that
// every such connection was dropped at the broker's veth.
func TestWarddEgressAndIngressKafka(t *testing.T) {
	kcat := testenv.RequireCommand(t, "kcat")
	n, addr, broker := empireKafkaNode(t)
	n.WritePolicy(t, "kafka-egress.yaml", empireEgressPolicy)
	// The broker lets hq produce only to empire-announce (its egress rules
	// also allow deathstar-plans) and the outpost consume it.
	n.WritePolicy(t, "kafka-ingress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-ingress}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: empire-hq}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: empire-announce}
  - fromEndpoints: [{matchLabels: {app: empire-outpost}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: consume, topic: empire-announce}
`)
	n.Start(t, 49300, 9493)

	c, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	run := kcatIn(c, n, kcat, addr)
	if out, err := run("empire-hq", "Happy 40th Birthday to General Tagge\n", "-P", "-t", "empire-announce"); err != nil {
		t.Fatalf("hq produce empire-announce (both allow): %v\n%s\nbroker log:\n%s", err, out, broker.LogTail())
	}
	if out, err := run("empire-outpost", "", "-C", "-t", "empire-announce", "-o", "beginning", "-c", "1", "-e"); err != nil || !strings.Contains(out, "General Tagge") {
		t.Errorf("outpost consume empire-announce (both allow): %v\n%s", err, out)
	}
	// hq's egress rules allow deathstar-plans; the broker's ingress does not.
	out, err := run("empire-hq", "the plans\n", "-P", "-t", "deathstar-plans")
	if err == nil || !strings.Contains(strings.ToLower(out), "authoriz") {
		t.Errorf("hq produce deathstar-plans (ingress denies): err %v, output %q; want an authorization error", err, out)
	}
	// The outpost's egress rules deny producing.
	out, err = run("empire-outpost", "Vader Booed at Empire Karaoke Party\n", "-P", "-t", "empire-announce")
	if err == nil || !strings.Contains(strings.ToLower(out), "authoriz") {
		t.Errorf("outpost produce empire-announce (egress denies): err %v, output %q; want an authorization error", err, out)
	}
}
