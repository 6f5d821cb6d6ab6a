package policyfilter

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds/npds"
)

// netConn is a NetworkConn that records what ward.kafka does.
type netConn struct {
	toServer, toClient []byte
	ended              [2]bool // InjectRead end, InjectWrite end
	closed             string
	drained            [2]int
}

func (c *netConn) DrainRead(n int)  { c.drained[0] += n }
func (c *netConn) DrainWrite(n int) { c.drained[1] += n }
func (c *netConn) InjectRead(b []byte, end bool) {
	c.toServer = append(c.toServer, b...)
	c.ended[0] = c.ended[0] || end
}
func (c *netConn) InjectWrite(b []byte, end bool) {
	c.toClient = append(c.toClient, b...)
	c.ended[1] = c.ended[1] || end
}
func (c *netConn) Close(_ bool, details string) { c.closed = details }

// read and write play Envoy's part around a network filter's hook: data
// the filter lets continue (NetworkContinue, not drained) goes on to the
// server (client) after what it injected.
func read(f proxylib.NetworkFilter, c *netConn, data [][]byte, end bool) {
	if f.OnRead(c, data, end) == proxylib.NetworkContinue {
		c.toServer = append(c.toServer, bytes.Join(data, nil)...)
		c.ended[0] = c.ended[0] || end
	}
}

func write(f proxylib.NetworkFilter, c *netConn, data [][]byte, end bool) {
	if f.OnWrite(c, data, end) == proxylib.NetworkContinue {
		c.toClient = append(c.toClient, bytes.Join(data, nil)...)
		c.ended[1] = c.ended[1] || end
	}
}
func (c *netConn) Addrs() proxylib.ConnAddrs {
	return proxylib.ConnAddrs{Remote: "10.0.0.9:40000", Local: "10.0.0.1:9092", ID: 1}
}

func kafkaPolicy(topic string, extra ...uint32) []*npds.NetworkPolicy {
	ps := []*npds.NetworkPolicy{{Name: "broker", EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9092, Rules: []*npds.PortNetworkPolicyRule{
			{RemoteIdentities: []uint32{1000}, L7: npds.Kafka(l7.KafkaRule{Role: "consume", Topic: topic})},
		}}}}}
	for _, id := range extra { // another endpoint: an unrelated policy change
		ps = append(ps, &npds.NetworkPolicy{Name: "other", EndpointIps: []string{"10.0.0.2"},
			IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{id}}}}}})
	}
	return ps
}

func newWardKafka(t *testing.T, ps []*npds.NetworkPolicy) (*kafkaConfig, *npdsclient.Client, *Env) {
	t.Helper()
	c := npdsclient.New(npdsclient.Config{Compile: Compile})
	if err := c.Apply(context.Background(), ps, nil); err != nil {
		t.Fatal(err)
	}
	env := &Env{}
	all, err := kafka.Compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	env.kafkaBudget.SetLimit(DefaultKafkaBudget)
	return &kafkaConfig{cfg: Config{RemoteIdentity: 1000}, client: c, budget: &env.kafkaBudget,
		factories: map[connRules]*kafka.Factory{}, allowAll: all}, c, env
}

func fetchFrame(corr int32, topic string) []byte {
	r := kmsg.NewPtrFetchRequest()
	r.SetVersion(11)
	tp := kmsg.NewFetchRequestTopic()
	tp.Topic = topic
	tp.Partitions = append(tp.Partitions, kmsg.NewFetchRequestTopicPartition())
	r.Topics = append(r.Topics, tp)
	b := binary.BigEndian.AppendUint16(nil, uint16(r.Key()))
	b = binary.BigEndian.AppendUint16(b, uint16(r.GetVersion()))
	b = binary.BigEndian.AppendUint32(b, uint32(corr))
	b = binary.BigEndian.AppendUint16(b, 1)
	b = append(b, 'c')
	b = r.AppendTo(b)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

func respFrame(corr int32) []byte {
	b := binary.BigEndian.AppendUint32(nil, 8)
	b = binary.BigEndian.AppendUint32(b, uint32(corr))
	return append(b, "resp"...)
}

// TestWardKafkaHalfClose checks the end of either direction is passed on
// (tcp_proxy then shuts the other side down), and that the stream's
// buffers go back to the process budget when the connection closes.
func TestWardKafkaHalfClose(t *testing.T) {
	cfg, _, env := newWardKafka(t, kafkaPolicy("t"))
	f := cfg.NewNetworkFilter()
	c := &netConn{}
	f.OnNewConnection(c)
	req := fetchFrame(1, "t")
	read(f, c, [][]byte{req[:10]}, false) // a partial request: buffered
	if env.kafkaBudget.Used() == 0 {
		t.Fatal("a buffered partial request is not charged to the budget")
	}
	read(f, c, nil, true)
	if !c.ended[0] || c.ended[1] || c.closed != "" {
		t.Fatalf("after the client's end: ended (read, write) %v, closed %q; want the read side ended only", c.ended, c.closed)
	}
	write(f, c, nil, true)
	if !c.ended[1] {
		t.Error("the server's end was not passed to the client")
	}
	f.OnClose(true)
	if n := env.kafkaBudget.Used(); n != 0 {
		t.Errorf("budget still charged %d bytes after the connection closed", n)
	}
}

// TestWardKafkaUnrelatedUpdateKeepsFetchSession checks a policy update
// that leaves a connection's Kafka rules as they were does not close a
// connection that holds a fetch session; a change to its rules does.
func TestWardKafkaUnrelatedUpdateKeepsFetchSession(t *testing.T) {
	cfg, client, _ := newWardKafka(t, kafkaPolicy("t"))
	f := cfg.NewNetworkFilter()
	c := &netConn{}
	f.OnNewConnection(c)
	read(f, c, [][]byte{fetchFrame(1, "t")}, false)
	write(f, c, [][]byte{respFrame(1)}, false)
	if err := client.Apply(context.Background(), kafkaPolicy("t", 77), nil); err != nil {
		t.Fatal(err)
	}
	read(f, c, [][]byte{fetchFrame(2, "t")}, false)
	if c.closed != "" || len(c.toServer) != 2*len(fetchFrame(1, "t")) {
		t.Fatalf("after an unrelated update: closed %q, server got %d bytes; want open, both fetches", c.closed, len(c.toServer))
	}
	write(f, c, [][]byte{respFrame(2)}, false)
	if err := client.Apply(context.Background(), kafkaPolicy("u", 77), nil); err != nil {
		t.Fatal(err)
	}
	read(f, c, [][]byte{fetchFrame(3, "t")}, false)
	if c.closed == "" {
		t.Error("after a change of its rules the fetch session's connection is open")
	}
}

func TestKafkaOptions(t *testing.T) {
	for _, tt := range []struct {
		name string
		raw  string
		ok   bool
	}{
		{name: "defaults", raw: `{}`, ok: true},
		{name: "set", raw: `{"kafka":{"max_frame":1048576,"memory_budget":33554432}}`, ok: true},
		{name: "unbounded budget", raw: `{"kafka":{"memory_budget":-1}}`, ok: true},
		{name: "max frame over the broker's", raw: `{"kafka":{"max_frame":209715200}}`},
		{name: "bad budget", raw: `{"kafka":{"memory_budget":-2}}`},
		{name: "unknown field", raw: `{"kafka":{"max_frames":1}}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var m map[string]any
			json.Unmarshal([]byte(tt.raw), &m)
			m["xds_socket"], m["node"] = "/nonexistent.sock", "n"
			raw, _ := json.Marshal(m)
			c, err := parseConfig(raw)
			if err == nil {
				err = c.Kafka.validate()
			}
			if (err == nil) != tt.ok {
				t.Errorf("config %s: error %v; want ok %v", tt.raw, err, tt.ok)
			}
		})
	}
}

// chainPolicies: client hq (10.0.0.9, identity 1000) may produce to a and
// b (egress); the broker (10.0.0.1) lets 1000 produce to a only (ingress).
func chainPolicies(hqAudit, brokerAudit bool) []*npds.NetworkPolicy {
	return []*npds.NetworkPolicy{
		{Name: "hq", EndpointIps: []string{"10.0.0.9"}, Audit: hqAudit,
			EgressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9092, Rules: []*npds.PortNetworkPolicyRule{
				{RemoteIdentities: []uint32{1000}, L7: npds.Kafka(l7.KafkaRule{Role: "produce", Topic: "a"}, l7.KafkaRule{Role: "produce", Topic: "b"})},
			}}}},
		{Name: "broker", EndpointIps: []string{"10.0.0.1"}, Audit: brokerAudit,
			IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9092, Rules: []*npds.PortNetworkPolicyRule{
				{RemoteIdentities: []uint32{1000}, L7: npds.Kafka(l7.KafkaRule{Role: "produce", Topic: "a"})},
			}}}},
	}
}

// TestKafkaChainedIngress: on hq's egress listener a connection to the
// local broker gets the broker's ingress rules too (its upstream skips the
// ingress proxy, redirect.MarkIngressChecked): a topic the egress rules
// allow and the ingress rules do not is denied. Audit mode relaxes only
// its own side.
func TestKafkaChainedIngress(t *testing.T) {
	produce := func(topic string) *kafka.Request {
		return &kafka.Request{APIKey: 0, APIVersion: 9, Topics: []string{topic}}
	}
	for _, tt := range []struct {
		name                 string
		hqAudit, brokerAudit bool
		a, b, c              bool // produce to a, b, c allowed by the matcher
		audit                bool // connRules.Audit
	}{
		{name: "both enforce", a: true},
		{name: "client audits", hqAudit: true, a: true},
		{name: "broker audits", brokerAudit: true, a: true, b: true},
		{name: "both audit", hqAudit: true, brokerAudit: true, a: true, b: true, audit: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, _ := newWardKafka(t, chainPolicies(tt.hqAudit, tt.brokerAudit))
			rs := connRules{c: cfg, ep: "hq", ip: netip.MustParseAddr("10.0.0.9"),
				dst: netip.MustParseAddr("10.0.0.1"), src: netip.MustParseAddr("10.0.0.9"), port: 9092}
			m, ok := rs.Rules(false, 9092, 1000)
			if !ok {
				t.Fatal("no rules for the chained connection")
			}
			for topic, want := range map[string]bool{"a": tt.a, "b": tt.b, "c": tt.c} {
				if got := m.Allow(produce(topic)); got != want {
					t.Errorf("produce %s: allowed %v, want %v", topic, got, want)
				}
			}
			if got := rs.Audit(); got != tt.audit {
				t.Errorf("Audit = %v, want %v", got, tt.audit)
			}
			if m2, _ := rs.Rules(false, 9092, 1000); m2 != m {
				t.Error("a second lookup in the same State gave another matcher (a fetch session would restart)")
			}
			// Not chained (no local destination): the egress rules alone.
			plain := connRules{c: cfg, ep: "hq", ip: netip.MustParseAddr("10.0.0.9")}
			if m, ok := plain.Rules(false, 9092, 1000); !ok || !m.Allow(produce("b")) {
				t.Error("an unchained egress connection does not get its egress rules alone")
			}
		})
	}
}
