// Package kafka is ward's Kafka conformance harness: it runs a real Apache
// Kafka 4.x broker (KRaft, single node, from the jars setup puts in
// third_party/kafka-libs) and real clients (kcat, the Kafka console
// producer and consumer, franz-go) against it, so the same scenarios can be
// played through ward's Go proxy in this package's tests and through Envoy
// with libward.so elsewhere.
//
// Every client reaches the broker through its own broker listener, so that
// a proxy in front of that listener sees all of the client's connections:
// a Kafka client connects to the address the broker advertises, and each
// listener advertises the address given for it (the proxy's).
package kafka

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/wardproxy/ward/internal/testenv"
)

// Version is the Kafka version of the jars (third_party/kafka/pom.xml).
const Version = "4.3.1"

const jarHint = "run `make setup` (scripts/setup.d/30-kafka.sh copies the Kafka jars into third_party/kafka-libs)"

// Classpath returns the classpath of the Kafka jars, skipping (failing in
// CI) when they or java are missing.
func Classpath(t testing.TB) string {
	t.Helper()
	testenv.RequireCommand(t, "java")
	dir := filepath.Dir(testenv.File(t, "third_party/kafka-libs/kafka_2.13-"+Version+".jar", jarHint))
	testenv.File(t, "third_party/kafka-libs/kafka-tools-"+Version+".jar", jarHint)
	return filepath.Join(dir, "*")
}

// BrokerConfig configures StartBroker. The zero value runs a broker with
// only its direct listener.
type BrokerConfig struct {
	// Advertise maps extra listener names (upper-case letters, e.g. "HQ")
	// to the address that listener advertises to clients, typically a
	// proxy in front of it. The broker listens on a free loopback port for
	// each; ListenerAddr gives it.
	Advertise map[string]string
	// Topics are created (1 partition) before StartBroker returns.
	Topics []string
	// Authorizer turns on KRaft's StandardAuthorizer with
	// allow.everyone.if.no.acl.found: a resource without ACLs is open to
	// everyone (every client is User:ANONYMOUS on PLAINTEXT), DenyACLs
	// close some.
	Authorizer bool
}

// Broker is a running single-node KRaft broker.
type Broker struct {
	addr      string            // the direct PLAINTEXT listener
	listeners map[string]string // name -> broker address
	dir       string
	cmd       *exec.Cmd
	done      chan struct{}
	logPath   string
}

// Addr is the broker's direct listener (advertising itself).
func (b *Broker) Addr() string { return b.addr }

// ListenerAddr is the address the broker listens on for a listener named in
// BrokerConfig.Advertise.
func (b *Broker) ListenerAddr(name string) string { return b.listeners[name] }

// LogTail returns the end of the broker's log, for failure messages.
func (b *Broker) LogTail() string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return err.Error()
	}
	if len(data) > 8000 {
		data = data[len(data)-8000:]
	}
	return string(data)
}

// FreeAddr returns a loopback address with a port free at the time of the
// call.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// StartBroker formats a KRaft log directory in t.TempDir, starts the broker
// (kafka.Kafka, -Xmx512m), waits until it answers metadata requests and
// creates cfg.Topics. t.Cleanup stops it.
func StartBroker(t testing.TB, cfg BrokerConfig) *Broker {
	t.Helper()
	cp := Classpath(t)
	dir := t.TempDir()
	b := &Broker{addr: FreeAddr(t), listeners: map[string]string{}, dir: dir, done: make(chan struct{}),
		logPath: filepath.Join(dir, "broker.log")}
	controller := FreeAddr(t)
	names := make([]string, 0, len(cfg.Advertise))
	for n := range cfg.Advertise {
		names = append(names, n)
	}
	sort.Strings(names)
	listeners := []string{"PLAINTEXT://" + b.addr, "CONTROLLER://" + controller}
	advertised := []string{"PLAINTEXT://" + b.addr}
	protocols := []string{"CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"}
	for _, n := range names {
		b.listeners[n] = FreeAddr(t)
		listeners = append(listeners, n+"://"+b.listeners[n])
		advertised = append(advertised, n+"://"+cfg.Advertise[n])
		protocols = append(protocols, n+":PLAINTEXT")
	}
	props := strings.Join([]string{
		"process.roles=broker,controller",
		"node.id=1",
		"controller.quorum.voters=1@" + controller,
		"listeners=" + strings.Join(listeners, ","),
		"advertised.listeners=" + strings.Join(advertised, ","),
		"controller.listener.names=CONTROLLER",
		"inter.broker.listener.name=PLAINTEXT",
		"listener.security.protocol.map=" + strings.Join(protocols, ","),
		"log.dirs=" + filepath.Join(dir, "data"),
		"num.partitions=1",
		"auto.create.topics.enable=false",
		"offsets.topic.replication.factor=1",
		"offsets.topic.num.partitions=1",
		"transaction.state.log.replication.factor=1",
		"transaction.state.log.min.isr=1",
		"transaction.state.log.num.partitions=1",
		"share.coordinator.state.topic.replication.factor=1",
		"share.coordinator.state.topic.min.isr=1",
		"share.coordinator.state.topic.num.partitions=1",
		"group.initial.rebalance.delay.ms=0",
		"",
	}, "\n")
	if cfg.Authorizer {
		props += "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\nallow.everyone.if.no.acl.found=true\n"
	}
	propsPath := filepath.Join(dir, "server.properties")
	if err := os.WriteFile(propsPath, []byte(props), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	format := exec.CommandContext(ctx, "java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", cp,
		"kafka.tools.StorageTool", "format", "-t", "wardconformanceAAAAAAA", "-c", propsPath)
	if out, err := format.CombinedOutput(); err != nil {
		t.Fatalf("kafka storage format: %v\n%s", err, out)
	}
	logf, err := os.Create(b.logPath)
	if err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command("java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", cp, "kafka.Kafka", propsPath)
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start kafka broker: %v", err)
	}
	go func() {
		_ = b.cmd.Wait() // the exit is reported through b.done; Stop kills on purpose
		logf.Close()
		close(b.done)
	}()
	t.Cleanup(b.stop)
	if err := b.waitReady(3 * time.Minute); err != nil {
		t.Fatalf("kafka broker not ready: %v\nbroker log:\n%s", err, b.LogTail())
	}
	if len(cfg.Topics) > 0 {
		if err := b.CreateTopics(cfg.Topics...); err != nil {
			t.Fatalf("create topics: %v\nbroker log:\n%s", err, b.LogTail())
		}
	}
	return b
}

func (b *Broker) stop() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM) // a clean KRaft shutdown
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	}
}

// client returns a franz-go client talking to the direct listener.
func (b *Broker) client() (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(b.addr), kgo.RequestTimeoutOverhead(20*time.Second))
}

func (b *Broker) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-b.done:
			return fmt.Errorf("broker exited")
		default:
		}
		cl, err := b.client()
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			req := kmsg.NewPtrMetadataRequest()
			var resp kmsg.Response
			resp, err = cl.Request(ctx, req)
			cancel()
			cl.Close()
			if err == nil && len(resp.(*kmsg.MetadataResponse).Brokers) > 0 {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("metadata lists no broker")
			}
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("after %v: %w", timeout, last)
}

// CreateTopics creates topics with one partition each on the direct
// listener and waits until their metadata shows a leader.
func (b *Broker) CreateTopics(topics ...string) error {
	cl, err := b.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 30000
	for _, n := range topics {
		tp := kmsg.NewCreateTopicsRequestTopic()
		tp.Topic, tp.NumPartitions, tp.ReplicationFactor = n, 1, 1
		req.Topics = append(req.Topics, tp)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return err
	}
	for _, tp := range resp.Topics {
		if tp.ErrorCode != 0 && tp.ErrorCode != 36 { // 36: TOPIC_ALREADY_EXISTS
			return fmt.Errorf("create topic %s: error code %d", tp.Topic, tp.ErrorCode)
		}
	}
	for {
		mreq := kmsg.NewPtrMetadataRequest()
		for _, n := range topics {
			mt := kmsg.NewMetadataRequestTopic()
			mt.Topic = kmsg.StringPtr(n)
			mreq.Topics = append(mreq.Topics, mt)
		}
		mresp, err := mreq.RequestWith(ctx, cl)
		if err != nil {
			return err
		}
		ready := true
		for _, tp := range mresp.Topics {
			if tp.ErrorCode != 0 || len(tp.Partitions) == 0 || tp.Partitions[0].Leader < 0 {
				ready = false
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topics %v have no leader: %w", topics, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ACL resource types (org.apache.kafka.common.resource.ResourceType).
const (
	ACLTopic           int8 = 2
	ACLGroup           int8 = 3
	ACLTransactionalID int8 = 5
)

// DenyACLs denies User:ANONYMOUS every operation on the named resources of
// a broker started with Authorizer.
func (b *Broker) DenyACLs(resourceType int8, names ...string) error {
	cl, err := b.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := kmsg.NewPtrCreateACLsRequest()
	for _, n := range names {
		c := kmsg.NewCreateACLsRequestCreation()
		c.ResourceType = kmsg.ACLResourceType(resourceType)
		c.ResourceName = n
		c.ResourcePatternType = kmsg.ACLResourcePatternTypeLiteral
		c.Principal = "User:ANONYMOUS"
		c.Host = "*"
		c.Operation = kmsg.ACLOperationAll
		c.PermissionType = kmsg.ACLPermissionTypeDeny
		req.Creations = append(req.Creations, c)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("create acls: %w", err)
	}
	for _, r := range resp.Results {
		if r.ErrorCode != 0 {
			return fmt.Errorf("create acl: error code %d", r.ErrorCode)
		}
	}
	return nil
}
