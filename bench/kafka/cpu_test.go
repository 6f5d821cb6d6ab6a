package kafkabench

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/wardproxy/ward/agent"
	ckafka "github.com/wardproxy/ward/conformance/kafka"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// TestKafkaCPU is the Kafka half of issue 17's CPU-per-request
// measurement: Envoy's CPU time per produced record (the run time of
// every Envoy thread, /proc/<pid>/task/*/schedstat, over the producer's
// run ÷ records) through Envoy's
// tcp_proxy alone and with libward.so's ward.kafka filter (10 topic
// rules, the produce matching the last), 1 KB and 100 B records,
// ProducerPerformance acks=1 unthrottled, arms interleaved. Envoy (one
// worker) runs on CPU 0, the broker, the producer and this process on
// CPU 1. A benchmark: run by bench/kafka/run.sh with WARD_KAFKA_CPU=1.
// The module is the test suites' (testenv.Module: build/test, or
// $WARD_MODULE_DIR).
//
//	WARD_KAFKA_CPU=1 WARD_KAFKA_CPU_ROUNDS=5 WARD_KAFKA_CPU_RECORDS=200000 go test -run TestKafkaCPU -v ./bench/kafka/
func TestKafkaCPU(t *testing.T) {
	if os.Getenv("WARD_KAFKA_CPU") == "" {
		t.Skip("set WARD_KAFKA_CPU=1 (bench/kafka/run.sh) to run the Kafka CPU benchmark")
	}
	records, rounds := envInt("WARD_KAFKA_CPU_RECORDS", 200000), envInt("WARD_KAFKA_CPU_ROUNDS", 5)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// This process and its children (the broker, the producers, Envoy
	// until it is moved to CPU 0) on CPU 1.
	if out, err := exec.Command("taskset", "-a", "-cp", "1", strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
		t.Fatalf("taskset: %v: %s", err, out)
	}
	const topic = "perf-topic"
	arms := []struct {
		name, listener string
		rules          int // 0: tcp_proxy only
		port           int
	}{{"Envoy tcp_proxy", "ENVOYTCP", 0, 0}, {"ward.kafka, 10 rules", "ENVOY10", 10, 0}}
	advertise := map[string]string{}
	for i := range arms {
		arms[i].port = freePort(t)
		advertise[arms[i].listener] = fmt.Sprintf("127.0.0.1:%d", arms[i].port)
	}
	b := ckafka.StartBroker(t, ckafka.BrokerConfig{Advertise: advertise, Topics: []string{topic}})

	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ag, err := agent.New(agent.Config{Node: "bench", StateDir: dir, Envoy: agent.EnvoyConfig{
		Binary: filepath.Join(root, "build", "envoy"), ModuleDir: filepath.Dir(testenv.Module(t)), Concurrency: 1, LogLevel: "warn",
	}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ag.Ready():
	case err := <-done:
		t.Fatalf("agent: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("agent not ready after 60s")
	}
	pid := ag.Envoy().PID()
	if out, err := exec.Command("taskset", "-a", "-cp", "0", strconv.Itoa(pid)).CombinedOutput(); err != nil {
		t.Fatalf("taskset: %v: %s", err, out)
	}
	var res xds.EnvoyResources
	var nps []*npds.NetworkPolicy
	for _, a := range arms {
		host, port, _ := net.SplitHostPort(b.ListenerAddr(a.listener))
		pn, _ := strconv.Atoi(port)
		res.Clusters = append(res.Clusters, types.Resource(xds.StaticCluster(a.listener, host, uint32(pn), false)))
		var filters []xds.ModuleFilter
		if a.rules > 0 {
			ep := fmt.Sprintf("broker-%d", a.rules)
			cfg, _ := json.Marshal(map[string]any{"xds_socket": ag.XDSSocket(), "node": ag.Node(), "endpoint": ep, "port": 9092, "remote_identity": 77})
			filters = []xds.ModuleFilter{{Name: "ward.kafka", Config: cfg}}
			var krs []l7.KafkaRule
			for j := range a.rules - 1 {
				krs = append(krs, l7.KafkaRule{Role: "produce", Topic: fmt.Sprintf("other-topic-%03d", j)})
			}
			krs = append(krs, l7.KafkaRule{Role: "produce", Topic: topic})
			nps = append(nps, &npds.NetworkPolicy{Name: ep, IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9092, Rules: []*npds.PortNetworkPolicyRule{{
				L7: npds.Kafka(krs...),
			}}}}})
		}
		l, err := xds.TCPListener{Name: a.listener, Address: "127.0.0.1", Port: uint32(a.port), Cluster: a.listener, Filters: filters}.Build()
		if err != nil {
			t.Fatal(err)
		}
		res.Listeners = append(res.Listeners, l)
	}
	srv := ag.XDS()
	srv.SetPolicies(nps)
	if _, err := srv.SetEnvoyResources(ctx, ag.Node(), res); err != nil {
		t.Fatal(err)
	}
	cp := ckafka.Classpath(t)
	// Warm the broker and both arms (listeners up, JIT, page cache).
	for _, a := range arms {
		if _, _, err := producerPerf(ctx, cp, advertise[a.listener], topic, records/10, 1024); err != nil {
			t.Fatalf("warm-up %s: %v", a.name, err)
		}
	}
	sizes := []int{1024, 100}
	type key struct {
		arm  string
		size int
	}
	cpu, rate := map[key][]float64{}, map[key][]float64{}
	for r := 0; r < rounds; r++ {
		for _, size := range sizes {
			for _, a := range arms {
				before, err := procCPU(pid)
				if err != nil {
					t.Fatal(err)
				}
				sent, msgs, err := producerPerf(ctx, cp, advertise[a.listener], topic, records, size)
				if err != nil {
					t.Fatalf("%s %d B: %v", a.name, size, err)
				}
				after, err := procCPU(pid)
				if err != nil {
					t.Fatal(err)
				}
				k := key{a.name, size}
				cpu[k] = append(cpu[k], float64(after-before)/float64(time.Microsecond)/float64(sent))
				rate[k] = append(rate[k], msgs)
			}
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Kafka %s ProducerPerformance, %d records per run, acks=1, unthrottled; Envoy 1.40, 1 worker, all threads on CPU 0; broker, producer and bench on CPU 1; %d interleaved rounds; median [min–max], ratios per round. %s.\n\n",
		ckafka.Version, records, rounds, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&sb, "| arm | record | Envoy µs/record | vs tcp_proxy | records/s | vs tcp_proxy |\n|---|---|--:|--:|--:|--:|\n")
	for _, size := range sizes {
		base := key{arms[0].name, size}
		for _, a := range arms {
			k := key{a.name, size}
			fmt.Fprintf(&sb, "| %s | %d B | %s | %s | %.0f | %.3f |\n", a.name, size, spread(cpu[k], 2), spread(ratios(cpu[k], cpu[base]), 3),
				median(rate[k]), median(rate[k])/median(rate[base]))
		}
	}
	t.Logf("\n%s", sb.String())
	if out := os.Getenv("WARD_KAFKA_CPU_OUT"); out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// perfLine matches ProducerPerformance's summary line, e.g. "100000
// records sent, 51334.7 records/sec (50.13 MB/sec), ...".
var perfLine = regexp.MustCompile(`(\d+) records sent, ([\d.]+) records/sec`)

// producerPerf runs org.apache.kafka.tools.ProducerPerformance against
// addr and returns the records sent and records/s.
func producerPerf(ctx context.Context, classpath, addr, topic string, records, size int) (int, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", classpath,
		"org.apache.kafka.tools.ProducerPerformance", "--topic", topic, "--num-records", strconv.Itoa(records),
		"--record-size", strconv.Itoa(size), "--throughput", "-1", "--producer-props", "bootstrap.servers="+addr, "acks=1").CombinedOutput()
	ms := perfLine.FindAllSubmatch(out, -1)
	if err != nil || len(ms) == 0 {
		return 0, 0, fmt.Errorf("producer perf: %v: %s", err, out)
	}
	m := ms[len(ms)-1]
	sent, err1 := strconv.Atoi(string(m[1]))
	rate, err2 := strconv.ParseFloat(string(m[2]), 64)
	if err1 != nil || err2 != nil || sent == 0 {
		return 0, 0, fmt.Errorf("producer perf: summary %q", m[0])
	}
	return sent, rate, nil
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// procCPU returns the CPU time of a process, thread-exact: the sum over
// /proc/<pid>/task/*/schedstat of the time each thread ran (ns). A Kafka
// run costs Envoy tens of milliseconds, a few clock ticks of
// /proc/<pid>/stat's utime+stime: too coarse. Envoy's threads (and the Go
// runtime's) live as long as the process, so none is lost in between.
func procCPU(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("threads of %d: %v", pid, err)
	}
	var total time.Duration
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			return 0, fmt.Errorf("read schedstat: %w", err)
		}
		fs := strings.Fields(string(b))
		if len(fs) < 1 {
			return 0, fmt.Errorf("parse %s", f)
		}
		ns, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s: %w", f, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

func ratios(num, den []float64) []float64 {
	r := make([]float64, min(len(num), len(den)))
	for i := range r {
		r[i] = num[i] / den[i]
	}
	return r
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func spread(v []float64, prec int) string {
	if len(v) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.*f [%.*f–%.*f]", prec, median(v), prec, slices.Min(v), prec, slices.Max(v))
}
