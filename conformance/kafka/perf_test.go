package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/stack"
	kfilter "github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// perfLine matches ProducerPerformance's summary line, e.g.
// "100000 records sent, 51334.7 records/sec (50.13 MB/sec), 318.91 ms avg
// latency, 601.00 ms max latency, 313 ms 50th, 540 ms 95th, 586 ms 99th,
// 598 ms 99.9th."
var perfLine = regexp.MustCompile(`(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th`)

type perfResult struct {
	arm           string
	size          int
	msgs, mbs     float64
	avg, p50, p99 float64
}

// ProducerPerf runs org.apache.kafka.tools.ProducerPerformance (acks=1,
// unthrottled) against addr and parses its summary.
func (c Console) ProducerPerf(ctx context.Context, addr, topic string, records, size int) (perfResult, error) {
	r := c.java(ctx, "", "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
		"--num-records", strconv.Itoa(records), "--record-size", strconv.Itoa(size), "--throughput", "-1",
		"--producer-props", "bootstrap.servers="+addr, "acks=1")
	m := perfLine.FindStringSubmatch(r.Stdout)
	if r.Err != nil || m == nil {
		return perfResult{}, fmt.Errorf("producer perf: %v", r)
	}
	f := func(i int) float64 { v, _ := strconv.ParseFloat(m[i], 64); return v }
	return perfResult{size: size, msgs: f(2), mbs: f(3), avg: f(4), p50: f(6), p99: f(8)}, nil
}

// ConsumerPerf runs org.apache.kafka.tools.ConsumerPerformance for records
// messages of topic and returns MB/s and msg/s.
func (c Console) ConsumerPerf(ctx context.Context, addr, topic string, records int) (mbs, msgs float64, err error) {
	r := c.java(ctx, "", "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", addr, "--topic", topic,
		"--messages", strconv.Itoa(records), "--timeout", "60000")
	// A header line, then: start.time, end.time, data.consumed.in.MB,
	// MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	if r.Err != nil || len(lines) < 2 {
		return 0, 0, fmt.Errorf("consumer perf: %v", r)
	}
	f := strings.Split(lines[len(lines)-1], ",")
	if len(f) < 6 {
		return 0, 0, fmt.Errorf("consumer perf: unexpected output %q", lines[len(lines)-1])
	}
	mbs, err1 := strconv.ParseFloat(strings.TrimSpace(f[3]), 64)
	msgs, err2 := strconv.ParseFloat(strings.TrimSpace(f[5]), 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("consumer perf: unexpected output %q", lines[len(lines)-1])
	}
	return mbs, msgs, nil
}

// TestProducerPerf compares producer throughput straight to the broker and
// through ward's Kafka parser (in this package's Go proxy, with 10 and 100
// topic rules). It is a benchmark, run by bench/kafka/run.sh with
// WARD_KAFKA_PERF=1. The Envoy arms run the official Envoy (one worker):
// tcp_proxy alone, and ward.kafka with 10 and 100 rules.
func TestProducerPerf(t *testing.T) {
	if os.Getenv("WARD_KAFKA_PERF") == "" {
		t.Skip("set WARD_KAFKA_PERF=1 (bench/kafka/run.sh) to run the producer benchmark")
	}
	records := 100000
	if v, err := strconv.Atoi(os.Getenv("WARD_KAFKA_PERF_RECORDS")); err == nil && v > 0 {
		records = v
	}
	const topic = "perf-topic"
	arms := []struct {
		name  string
		rules int
	}{{"ward-go-proxy-10-rules", 10}, {"ward-go-proxy-100-rules", 100}}
	proxies := map[string]*proxy{}
	advertise := map[string]string{}
	for i, a := range arms {
		p := listenProxy(t, uint32(10+i))
		proxies[a.name] = p
		advertise[fmt.Sprintf("PERF%d", i)] = p.Addr()
	}
	// The Envoy arms: the official Envoy (one worker) with tcp_proxy only,
	// and with libward.so's ward.kafka filter enforcing 10 and 100 rules.
	envoyArms := []struct {
		name, listener string
		rules          int // 0: tcp_proxy only
		port           uint32
	}{{"envoy-tcp-proxy", "ENVOYTCP", 0, 0}, {"envoy-ward-10-rules", "ENVOY10", 10, 0}, {"envoy-ward-100-rules", "ENVOY100", 100, 0}}
	for i := range envoyArms {
		envoyArms[i].port = stack.FreePort(t)
		advertise[envoyArms[i].listener] = fmt.Sprintf("127.0.0.1:%d", envoyArms[i].port)
	}
	b := StartBroker(t, BrokerConfig{Advertise: advertise, Topics: []string{topic}})
	st := stack.Start(t, stack.Options{})
	var res xds.EnvoyResources
	var nps []*npds.NetworkPolicy
	for _, a := range envoyArms {
		host, port, _ := net.SplitHostPort(b.ListenerAddr(a.listener))
		pn, _ := strconv.Atoi(port)
		res.Clusters = append(res.Clusters, xds.StaticCluster(a.name, host, uint32(pn), false))
		var filters []xds.ModuleFilter
		if a.rules > 0 {
			ep := fmt.Sprintf("broker-%d", a.rules)
			cfg, _ := json.Marshal(map[string]any{"xds_socket": st.Socket, "node": st.Node, "endpoint": ep, "port": 9092, "remote_identity": 77})
			filters = []xds.ModuleFilter{{Name: "ward.kafka", Config: cfg}}
			var krs []l7.KafkaRule
			for j := range a.rules - 1 {
				krs = append(krs, l7.KafkaRule{Role: "produce", Topic: fmt.Sprintf("other-topic-%03d", j)})
			}
			krs = append(krs, l7.KafkaRule{Role: "produce", Topic: topic}, l7.KafkaRule{Role: "consume", Topic: topic})
			nps = append(nps, &npds.NetworkPolicy{Name: ep, IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9092, Rules: []*npds.PortNetworkPolicyRule{{
				L7: npds.Kafka(krs...),
			}}}}})
		}
		l, err := xds.TCPListener{Name: a.name, Address: "127.0.0.1", Port: a.port, Cluster: a.name, Filters: filters}.Build()
		if err != nil {
			t.Fatal(err)
		}
		res.Listeners = append(res.Listeners, l)
	}
	st.PushEnvoy(t, res)
	st.PushPolicy(t, nps, nil)
	for i, a := range arms {
		var rules []policy.PortRuleKafka
		for j := range a.rules - 1 {
			rules = append(rules, policy.PortRuleKafka{Role: "produce", Topic: fmt.Sprintf("other-topic-%03d", j)})
		}
		rules = append(rules, policy.PortRuleKafka{Role: "produce", Topic: topic}, policy.PortRuleKafka{Role: "consume", Topic: topic})
		m, err := kfilter.Compile(rules)
		if err != nil {
			t.Fatal(err)
		}
		f := kfilter.NewParserFactory(kfilter.RuleSourceFunc(func(bool, uint16, uint32) (*kfilter.Matcher, bool) { return m, true }), nil)
		proxies[a.name].serve(b.ListenerAddr(fmt.Sprintf("PERF%d", i)), f)
	}
	console := NewConsole(t)
	// Warm the broker (log segment, page cache, JIT) before measuring.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	_, err := console.ProducerPerf(ctx, b.Addr(), topic, records/2, 1024)
	cancel()
	if err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	type armAddr struct{ arm, addr string }
	addrs := []armAddr{{"direct", b.Addr()}}
	for _, a := range envoyArms {
		addrs = append(addrs, armAddr{a.name, advertise[a.listener]})
	}
	for _, a := range arms {
		addrs = append(addrs, armAddr{a.name, proxies[a.name].Addr()})
	}
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("WARD_KAFKA_PERF_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	// Arms interleave, in a rotated order each round; each cell is the
	// median round (by msg/s), so drift on a shared machine hits every arm.
	runs := map[string][]perfResult{}
	for round := range rounds {
		for _, size := range []int{1024, 100} {
			for i := range addrs {
				a := addrs[(i+round)%len(addrs)]
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				res, err := console.ProducerPerf(ctx, a.addr, topic, records, size)
				cancel()
				if err != nil {
					t.Fatalf("%s %dB: %v", a.arm, size, err)
				}
				res.arm = a.arm
				key := fmt.Sprintf("%s/%d", a.arm, size)
				runs[key] = append(runs[key], res)
			}
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "| arm | record | msg/s | MB/s | ratio to direct | avg ms | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|\n")
	for _, size := range []int{1024, 100} {
		var base float64
		for _, a := range addrs {
			rs := runs[fmt.Sprintf("%s/%d", a.arm, size)]
			sort.Slice(rs, func(i, j int) bool { return rs[i].msgs < rs[j].msgs })
			r := rs[len(rs)/2]
			if a.arm == "direct" {
				base = r.msgs
			}
			fmt.Fprintf(&sb, "| %s | %d B | %.0f | %.1f | %.2f | %.1f | %.0f | %.0f |\n", r.arm, r.size, r.msgs, r.mbs, r.msgs/base, r.avg, r.p50, r.p99)
		}
	}
	fmt.Fprintf(&sb, "\n| arm | consume MB/s | consume msg/s | ratio to direct |\n|---|---|---|---|\n")
	var consumeBase float64
	for _, a := range addrs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		mbs, msgs, err := console.ConsumerPerf(ctx, a.addr, topic, records)
		cancel()
		if err != nil {
			t.Fatalf("%s consume: %v", a.arm, err)
		}
		if a.arm == "direct" {
			consumeBase = mbs
		}
		fmt.Fprintf(&sb, "| %s | %.1f | %.0f | %.2f |\n", a.arm, mbs, msgs, mbs/consumeBase)
	}
	t.Logf("ProducerPerformance and ConsumerPerformance, %d records, acks=1, Kafka %s:\n%s", records, Version, sb.String())
	if out := os.Getenv("WARD_KAFKA_PERF_OUT"); out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
