package multinode

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/kafka"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestKafkaAcrossNodes is the seed's Kafka tutorial (examples/kafka, the
// broker's ingress rules) across nodes: kcat in empire-hq and
// empire-outpost on node A, the broker in the kafka pod on node B. Node B's
// Envoy enforces the rules on the flows its datapath hands over from the
// native device: hq produces to empire-announce, the outpost consumes it,
// and the outpost's produce gets the authorization error from ward.
//
// The broker is a real KRaft broker (conformance/kafka) on the test's
// loopback, put inside the kafka pod by a forwarder on the pod's address,
// which the broker advertises: every client connection goes from node A's
// pods to node B's pod.
func TestKafkaAcrossNodes(t *testing.T) {
	kcat := testenv.RequireCommand(t, "kcat")
	c := newCluster(t,
		[]node.PodSpec{
			{Name: "empire-hq", Labels: map[string]string{"app": "empire-hq"}},
			{Name: "empire-outpost", Labels: map[string]string{"app": "empire-outpost"}},
		},
		[]node.PodSpec{{Name: "kafka", Labels: map[string]string{"app": "kafka"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	kp := b.Pods["kafka"]
	addr := net.JoinHostPort(kp.IP.String(), "9092")
	broker := kafka.StartBroker(t, kafka.BrokerConfig{Advertise: map[string]string{"POD": addr}, Topics: []string{"empire-announce", "deathstar-plans"}})
	ln, err := kp.Listen("tcp", ":9092")
	if err != nil {
		t.Fatal(err)
	}
	forward(t, ln, broker.ListenerAddr("POD"))
	pol, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/kafka/kafka-sw-security-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b.WritePolicy(t, "kafka.yaml", string(pol))
	a.Start(t, 38000, 9710)
	b.Start(t, 38100, 9711)

	ctx, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	run := func(pod, stdin string, args ...string) (string, error) {
		cmd := a.Pods[pod].Command(ctx, kcat, append([]string{"-b", addr, "-m", "15"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("empire-hq", "Happy 40th Birthday to General Tagge\n", "-P", "-t", "empire-announce"); err != nil {
		t.Fatalf("hq (node A) produce empire-announce: %v\n%s\nbroker log:\n%s", err, out, broker.LogTail())
	}
	if out, err := run("empire-outpost", "", "-C", "-t", "empire-announce", "-o", "beginning", "-c", "1", "-e"); err != nil || !strings.Contains(out, "General Tagge") {
		t.Errorf("outpost (node A) consume empire-announce: %v\n%s", err, out)
	}
	out, err := run("empire-outpost", "Vader Booed at Empire Karaoke Party\n", "-P", "-t", "empire-announce")
	if err == nil || !strings.Contains(strings.ToLower(out), "authoriz") {
		t.Errorf("outpost (node A) produce empire-announce: err %v, output %q; want an authorization error from node B's Envoy", err, out)
	}
}

// forward accepts on ln (a pod's listener) and copies each connection to
// and from addr (the broker on the test's loopback) until the test ends.
func forward(t *testing.T, ln net.Listener, addr string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
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
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}
