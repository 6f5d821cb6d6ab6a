package kafka

import (
	"context"
	"errors"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	kfilter "github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/proxylib"
)

// Identities of the seed's Kafka tutorial (Cilium "Securing a Kafka
// Cluster"): one proxy listener per client pod.
const (
	brokerIdentity uint32 = 100
	idHQ           uint32 = 1
	idBackup       uint32 = 2
	idOutpost8888  uint32 = 3
	idOutpost9999  uint32 = 4
	idAdmin        uint32 = 5
	// Clients held to Cilium's role expansions, to show what they break.
	idCiliumProduce uint32 = 6
	idCiliumConsume uint32 = 7
)

// ciliumRole spells Cilium's expansion of a role (cilium/proxy
// pkg/policy/api/kafka) as apiKey rules on one topic.
func ciliumRole(topic string, keys ...string) []policy.PortRuleKafka {
	var rs []policy.PortRuleKafka
	for _, k := range keys {
		rs = append(rs, policy.PortRuleKafka{APIKey: k, Topic: topic})
	}
	return rs
}

const (
	announce = "empire-announce"
	plans    = "deathstar-plans"
)

// empirePolicy is the tutorial's policy (kafka-sw-security-policy.yaml),
// plus an apiKey rule set for the admin client.
func empirePolicy() map[uint32][]policy.PortRuleKafka {
	outpost := []policy.PortRuleKafka{{Role: "consume", Topic: announce}}
	return map[uint32][]policy.PortRuleKafka{
		idHQ:            {{Role: "produce", Topic: announce}, {Role: "produce", Topic: plans}},
		idBackup:        {{Role: "consume", Topic: plans}},
		idOutpost8888:   outpost,
		idOutpost9999:   outpost,
		idAdmin:         {{APIKey: "apiversions"}, {APIKey: "metadata"}, {APIKey: "createtopics"}},
		idCiliumProduce: ciliumRole(announce, "produce", "metadata", "apiversions"),
		idCiliumConsume: ciliumRole(announce, "fetch", "offsets", "metadata", "offsetcommit", "offsetfetch",
			"findcoordinator", "joingroup", "heartbeat", "leavegroup", "syncgroup", "apiversions"),
	}
}

type recordSink struct {
	mu   sync.Mutex
	recs []flow.Record
}

func (s *recordSink) Emit(r *flow.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, *r)
}

func (s *recordSink) find(f func(flow.Record) bool) []flow.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []flow.Record
	for _, r := range s.recs {
		if f(r) {
			out = append(out, r)
		}
	}
	return out
}

type empire struct {
	broker  *Broker
	proxies map[uint32]*proxy
	sink    *recordSink
}

func (e *empire) addr(id uint32) string { return e.proxies[id].Addr() }

var listenerNames = map[uint32]string{idHQ: "HQ", idBackup: "BACKUP", idOutpost8888: "OUTPOSTA", idOutpost9999: "OUTPOSTB",
	idAdmin: "ADMIN", idCiliumProduce: "CILIUMP", idCiliumConsume: "CILIUMC"}

func startEmpire(t *testing.T) *empire {
	t.Helper()
	rules := map[uint32]*kfilter.Matcher{}
	for id, rs := range empirePolicy() {
		m, err := kfilter.Compile(rs)
		if err != nil {
			t.Fatal(err)
		}
		rules[id] = m
	}
	e := &empire{proxies: map[uint32]*proxy{}, sink: &recordSink{}}
	advertise := map[string]string{}
	for id, name := range listenerNames {
		e.proxies[id] = listenProxy(t, id)
		advertise[name] = e.proxies[id].Addr()
	}
	e.broker = StartBroker(t, BrokerConfig{Advertise: advertise, Topics: []string{announce, plans}})
	factory := kfilter.NewParserFactory(kfilter.RuleSourceFunc(func(ingress bool, port uint16, remote uint32) (*kfilter.Matcher, bool) {
		m, ok := rules[remote]
		return m, ok
	}), e.sink)
	var pf proxylib.ParserFactory = factory
	if dir := os.Getenv("WARD_KAFKA_CAPTURE"); dir != "" {
		pf = &captureFactory{inner: factory, dir: dir, seen: map[string]bool{}, name: func(id uint32) string {
			return strings.ToLower(listenerNames[id])
		}}
	}
	for id, name := range listenerNames {
		e.proxies[id].serve(e.broker.ListenerAddr(name), pf)
	}
	return e
}

// ctxT bounds one subtest: generous, for JVM clients on a loaded machine;
// it only stops a hung client, no assertion depends on time.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func isAuthError(out string) bool {
	for _, s := range []string{"authoriz", "Authoriz", "Not authorized"} {
		if strings.Contains(out, s) {
			return true
		}
	}
	return false
}

// TestEmpire plays the seed's Kafka tutorial against a real Kafka 4.x broker
// through ward's Kafka parser, with kcat, the console tools and franz-go.
func TestEmpire(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Kafka broker and JVM clients")
	}
	e := startEmpire(t)
	kcat := NewKcat(t)
	console := NewConsole(t)

	t.Run("kcat", func(t *testing.T) {
		ctx := ctxT(t)
		if r := kcat.Produce(ctx, e.addr(idHQ), announce, "kcat: Happy 40th Birthday to General Tagge\n"); r.Err != nil {
			t.Fatalf("hq produce %s: %v", announce, r)
		}
		if r := kcat.Produce(ctx, e.addr(idHQ), plans, "kcat: deathstar reactor design v3\n"); r.Err != nil {
			t.Fatalf("hq produce %s: %v", plans, r)
		}
		if r := kcat.Consume(ctx, e.addr(idOutpost8888), announce, 1); r.Err != nil || !strings.Contains(r.Stdout, "General Tagge") {
			t.Fatalf("outpost-8888 consume %s: %v", announce, r)
		}
		if r := kcat.ConsumeGroup(ctx, e.addr(idOutpost9999), "outpost-9999", announce, 1); r.Err != nil || !strings.Contains(r.Stdout, "General Tagge") {
			t.Fatalf("outpost-9999 consume %s in a group: %v", announce, r)
		}
		r := kcat.Produce(ctx, e.addr(idOutpost9999), announce, "kcat: Vader Booed at Empire Karaoke Party\n")
		if r.Err == nil || !isAuthError(r.Output()) || ctx.Err() != nil {
			t.Fatalf("outpost-9999 produce %s: want an authorization error, got %v", announce, r)
		}
		r = kcat.Consume(ctx, e.addr(idOutpost9999), plans, 1)
		if r.Err == nil || !isAuthError(r.Output()) || ctx.Err() != nil {
			t.Fatalf("outpost-9999 consume %s: want an authorization error, got %v", plans, r)
		}
		if r := kcat.Consume(ctx, e.addr(idBackup), plans, 1); r.Err != nil || !strings.Contains(r.Stdout, "reactor design") {
			t.Fatalf("backup consume %s: %v", plans, r)
		}
	})

	t.Run("console", func(t *testing.T) {
		ctx := ctxT(t)
		if r := console.Produce(ctx, e.addr(idHQ), announce, "console: Happy 40th Birthday to General Tagge\n"); r.Err != nil {
			t.Fatalf("hq produce %s: %v", announce, r)
		}
		if r := console.Produce(ctx, e.addr(idHQ), plans, "console: deathstar reactor design v3\n"); r.Err != nil {
			t.Fatalf("hq produce %s: %v", plans, r)
		}
		if r := console.Consume(ctx, e.addr(idOutpost8888), announce, 1); r.Err != nil || !strings.Contains(r.Stdout, "General Tagge") {
			t.Fatalf("outpost-8888 consume %s: %v", announce, r)
		}
		// The KIP-848 consumer group protocol (ConsumerGroupHeartbeat).
		if r := console.Consume(ctx, e.addr(idOutpost9999), announce, 1, "group.protocol=consumer"); r.Err != nil || !strings.Contains(r.Stdout, "General Tagge") {
			t.Fatalf("outpost-9999 consume %s (group.protocol=consumer): %v", announce, r)
		}
		r := console.Produce(ctx, e.addr(idOutpost9999), announce, "console: Vader Booed at Empire Karaoke Party\n")
		if !isAuthError(r.Output()) || ctx.Err() != nil {
			t.Fatalf("outpost-9999 produce %s: want an authorization error, got %v", announce, r)
		}
		// Without idempotence the producer gets as far as Produce (v13,
		// topics by ID) and must see TOPIC_AUTHORIZATION_FAILED there.
		r = console.Produce(ctx, e.addr(idOutpost9999), announce, "console: Vader Booed again\n", "enable.idempotence=false")
		if !strings.Contains(r.Output(), "TopicAuthorizationException") || ctx.Err() != nil {
			t.Fatalf("outpost-9999 produce %s without idempotence: want TopicAuthorizationException, got %v", announce, r)
		}
		// The console consumer reports the error and exits 0 ("Error
		// processing message, terminating consumer process").
		r = console.Consume(ctx, e.addr(idOutpost9999), plans, 1)
		if strings.Contains(r.Stdout, "reactor") || !isAuthError(r.Output()) || ctx.Err() != nil {
			t.Fatalf("outpost-9999 consume %s: want an authorization error, got %v", plans, r)
		}
		if r := console.Consume(ctx, e.addr(idBackup), plans, 1); r.Err != nil || !strings.Contains(r.Stdout, "reactor design") {
			t.Fatalf("backup consume %s: %v", plans, r)
		}
	})

	t.Run("franz-go", func(t *testing.T) {
		ctx := ctxT(t)
		if err := FranzProduce(ctx, e.addr(idHQ), announce, "franz: Happy 40th Birthday to General Tagge"); err != nil {
			t.Fatalf("hq produce: %v", err)
		}
		got, err := FranzConsume(ctx, e.addr(idOutpost8888), "franz-outposts", announce, 1)
		if err != nil || len(got) == 0 {
			t.Fatalf("outpost consume: %v, %v", got, err)
		}
		err = FranzProduce(ctx, e.addr(idOutpost9999), announce, "franz: Vader Booed")
		if !errors.Is(err, kerr.TopicAuthorizationFailed) && !errors.Is(err, kerr.ClusterAuthorizationFailed) {
			t.Fatalf("outpost produce: error %v; want an authorization error", err)
		}
		_, err = FranzConsume(ctx, e.addr(idOutpost9999), "franz-spy", plans, 1)
		if !errors.Is(err, kerr.TopicAuthorizationFailed) {
			t.Fatalf("outpost consume %s: error %v; want TOPIC_AUTHORIZATION_FAILED", plans, err)
		}
	})

	t.Run("apiKey rules", func(t *testing.T) {
		ctx := ctxT(t)
		cl, err := kgo.NewClient(kgo.SeedBrokers(e.addr(idAdmin)))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		create := kmsg.NewPtrCreateTopicsRequest()
		create.TimeoutMillis = 30000
		ct := kmsg.NewCreateTopicsRequestTopic()
		ct.Topic, ct.NumPartitions, ct.ReplicationFactor = "empire-new", 1, 1
		create.Topics = append(create.Topics, ct)
		cresp, err := create.RequestWith(ctx, cl)
		if err != nil || len(cresp.Topics) != 1 || cresp.Topics[0].ErrorCode != 0 {
			t.Fatalf("createtopics: %+v, %v; want success", cresp, err)
		}
		del := kmsg.NewPtrDeleteTopicsRequest()
		del.TimeoutMillis = 30000
		dt := kmsg.NewDeleteTopicsRequestTopic()
		dt.Topic = kmsg.StringPtr(announce)
		del.Topics = append(del.Topics, dt)
		del.TopicNames = []string{announce}
		dresp, err := del.RequestWith(ctx, cl)
		if err != nil || len(dresp.Topics) != 1 || dresp.Topics[0].ErrorCode != kerr.TopicAuthorizationFailed.Code {
			t.Fatalf("deletetopics: %+v, %v; want TOPIC_AUTHORIZATION_FAILED", dresp, err)
		}
		if err := e.broker.CreateTopics(announce); err != nil {
			t.Fatalf("%s is gone after a denied delete: %v", announce, err)
		}
	})

	// ward's roles add InitProducerId and ConsumerGroupHeartbeat to
	// Cilium's because today's default clients fail without them.
	t.Run("cilium roles break current clients", func(t *testing.T) {
		ctx := ctxT(t)
		if r := kcat.Produce(ctx, e.addr(idCiliumProduce), announce, "kcat: not idempotent by default\n"); r.Err != nil {
			t.Errorf("kcat produce with Cilium's produce role: %v", r)
		}
		r := console.Produce(ctx, e.addr(idCiliumProduce), announce, "console: idempotent by default\n")
		if !strings.Contains(r.Output(), "ClusterAuthorizationException") {
			t.Errorf("console producer with Cilium's produce role (no InitProducerId): want ClusterAuthorizationException, got %v", r)
		}
		if r := console.Consume(ctx, e.addr(idCiliumConsume), announce, 1); r.Err != nil || !strings.Contains(r.Stdout, "General Tagge") {
			t.Errorf("classic console consumer with Cilium's consume role: %v", r)
		}
		r = console.Consume(ctx, e.addr(idCiliumConsume), announce, 1, "group.protocol=consumer")
		if strings.Contains(r.Stdout, "General Tagge") || !isAuthError(r.Output()) {
			t.Errorf("KIP-848 console consumer with Cilium's consume role (no ConsumerGroupHeartbeat): want an authorization error, got %v", r)
		}
	})

	t.Run("api keys per client", func(t *testing.T) {
		// Which API keys the real clients sent, with their verdicts: the
		// evidence behind the role lists in the filters/kafka package doc.
		type kv struct {
			id   uint32
			name string
			v    flow.Verdict
		}
		seen := map[kv]int{}
		for _, r := range e.sink.find(func(r flow.Record) bool { return r.Kafka != nil }) {
			seen[kv{r.Source.Identity, r.Kafka.APIKeyName, r.Verdict}]++
		}
		keys := make([]kv, 0, len(seen))
		for k := range seen {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			a, b := keys[i], keys[j]
			if a.id != b.id {
				return a.id < b.id
			}
			if a.name != b.name {
				return a.name < b.name
			}
			return a.v < b.v
		})
		for _, k := range keys {
			t.Logf("identity %d (%s): %-24s %-8s x%d", k.id, listenerNames[k.id], k.name, k.v, seen[k])
		}
	})

	t.Run("flow records", func(t *testing.T) {
		if errs := e.sink.find(func(r flow.Record) bool { return r.Verdict == flow.Error }); len(errs) > 0 {
			t.Errorf("the parser closed %d connections of real clients; first: %+v %+v", len(errs), errs[0], errs[0].Kafka)
		}
		denied := e.sink.find(func(r flow.Record) bool {
			return r.Verdict == flow.Denied && r.Source.Identity == idOutpost9999 && r.Kafka != nil &&
				r.Kafka.APIKey == 0 && len(r.Kafka.Topics) > 0 && r.Kafka.Topics[0] == announce
		})
		if len(denied) == 0 {
			t.Error("no denied Produce record for outpost-9999")
		}
		byID := false
		for _, r := range denied {
			byID = byID || r.Kafka.APIVersion >= 13 // Produce v13 names topics by ID (KIP-516)
		}
		if !byID {
			t.Error("no Produce v13 (topic IDs) was denied; the Java producer should use it against Kafka 4.3")
		}
	})
}
