package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

type env struct {
	t    *testing.T
	repo *Repository
	eps  map[string]uint64
}

func newEnv(t *testing.T, cfg Config, docs ...string) *env {
	t.Helper()
	e := &env{t: t, repo: NewRepository(cfg), eps: map[string]uint64{}}
	for _, d := range docs {
		e.upsert(d)
	}
	return e
}

func (e *env) upsert(doc string) {
	e.t.Helper()
	ps, err := Parse("test.yaml", []byte(doc))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range ps {
		e.repo.Upsert(p)
	}
}

// ep registers (once) the endpoint "ns/k=v,k=v" and returns its ID.
func (e *env) ep(name string, ports ...NamedPort) uint64 {
	e.t.Helper()
	if id, ok := e.eps[name]; ok && len(ports) == 0 {
		return id
	}
	ns, rest, _ := strings.Cut(name, "/")
	m := map[string]string{}
	for _, kv := range strings.Split(rest, ",") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	id, ok := e.eps[name]
	if !ok {
		id = uint64(len(e.eps) + 1)
		e.eps[name] = id
	}
	ls := K8sLabels(m, ns)
	if _, hasHost := m["reserved:host"]; hasHost {
		ls = K8sLabels(m, "")
	}
	if _, err := e.repo.UpsertEndpoint(Endpoint{ID: id, Labels: ls, NamedPorts: ports}); err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) policy(name string) *EndpointPolicy {
	e.t.Helper()
	p, ok := e.repo.Resolve(e.ep(name))
	if !ok {
		e.t.Fatalf("no policy for %s", name)
	}
	return p
}

func (e *env) id(name string) NumericIdentity { return e.policy(name).Identity }

// verdict evaluates both sides of from -> to like `ward policy test`
// (L7: "redirect" when the proxy must decide).
func (e *env) verdict(from, to string, remoteFrom, remoteTo NumericIdentity, proto Protocol, port uint16) string {
	e.t.Helper()
	for _, n := range []string{from, to} {
		if n != "" {
			e.ep(n)
		}
	}
	v := "allowed"
	if from != "" {
		p := e.policy(from)
		if remoteTo == 0 {
			remoteTo = e.id(to)
		}
		d := p.Egress.Lookup(remoteTo, proto, port, p.Audit)
		switch d.Verdict {
		case VerdictDenied:
			return "denied"
		case VerdictRedirect:
			v = "redirect"
		case VerdictAudited:
			v = "audited"
		}
	}
	if to != "" {
		p := e.policy(to)
		if remoteFrom == 0 {
			remoteFrom = e.id(from)
		}
		d := p.Ingress.Lookup(remoteFrom, proto, port, p.Audit)
		switch d.Verdict {
		case VerdictDenied:
			return "denied"
		case VerdictRedirect:
			v = "redirect"
		case VerdictAudited:
			v = "audited"
		}
	}
	return v
}

func (e *env) check(from, to string, proto Protocol, port uint16, want string) {
	e.t.Helper()
	if got := e.verdict(from, to, 0, 0, proto, port); got != want {
		e.t.Errorf("%s -> %s %s/%d: got %s, want %s", from, to, proto, port, got, want)
	}
}

const ds = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
`

func TestDeathstar(t *testing.T) {
	e := newEnv(t, Config{}, ds)
	e.check("default/org=empire,class=tiefighter", "default/org=empire,class=deathstar", ProtocolTCP, 80, "redirect")
	e.check("default/org=alliance,class=xwing", "default/org=empire,class=deathstar", ProtocolTCP, 80, "denied")
	e.check("default/org=empire,class=tiefighter", "default/org=empire,class=deathstar", ProtocolTCP, 8080, "denied")
	// Another namespace's empire ship is not selected (CNP selectors
	// default to the policy's namespace).
	e.check("other/org=empire,class=tiefighter", "default/org=empire,class=deathstar", ProtocolTCP, 80, "denied")

	p := e.policy("default/org=empire,class=deathstar")
	if !p.Ingress.Enforced || p.Egress.Enforced {
		t.Errorf("enforcement ingress=%v egress=%v", p.Ingress.Enforced, p.Egress.Enforced)
	}
	if len(p.Ingress.Proxy) != 1 {
		t.Fatalf("proxy ports = %v", p.Ingress.Proxy)
	}
	lp := p.Ingress.Proxy[0]
	if lp.Kind.String() != "http" || lp.Port != 80 || lp.Protocol != ProtocolTCP || len(lp.Selections) != 1 {
		t.Fatalf("L7 port = %+v", lp)
	}
	sel := lp.Selections[0]
	tie := e.id("default/org=empire,class=tiefighter")
	if !sel.Selects(tie) || sel.Selects(e.id("default/org=alliance,class=xwing")) || sel.AllowAll {
		t.Errorf("selection = %+v", sel)
	}
	if len(sel.Rules.HTTP) != 1 || sel.Rules.HTTP[0].Path != "/v1/request-landing" {
		t.Errorf("rules = %+v", sel.Rules)
	}
	d := p.Ingress.Lookup(tie, ProtocolTCP, 80, false)
	if d.Verdict != VerdictRedirect || d.L7 != lp || len(d.Selections) != 1 {
		t.Errorf("lookup = %+v", d)
	}
}

// "If a layer 4 rule is specified in the policy, and a similar layer 4
// rule with layer 7 rules is also specified, then the layer 7 portions of
// the latter rule will have no effect."
func TestPlainL4MakesL7Moot(t *testing.T) {
	l4 := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`
	e := newEnv(t, Config{}, ds, l4)
	e.check("default/org=empire,class=tiefighter", "default/org=empire,class=deathstar", ProtocolTCP, 80, "allowed")

	// An L3-only allow (all ports) has the same effect.
	l3 := strings.Replace(strings.Replace(l4, "name: l4", "name: l4", 1), `    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`, "", 1)
	e = newEnv(t, Config{}, ds, l3)
	e.check("default/org=empire,class=tiefighter", "default/org=empire,class=deathstar", ProtocolTCP, 80, "allowed")

	// A broader L3 allow for every peer: the redirect entry for the
	// tiefighter is covered, so its L7 selection gains an allow-all.
	all := `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [all]
`
	e = newEnv(t, Config{}, ds, all)
	e.check("default/org=empire,class=tiefighter", "default/org=empire,class=deathstar", ProtocolTCP, 80, "allowed")
	p := e.policy("default/org=empire,class=deathstar")
	found := false
	for _, s := range p.Ingress.Proxy[0].Selections {
		if s.AllowAll && s.Selects(e.id("default/org=empire,class=tiefighter")) {
			found = true
		}
	}
	if !found {
		t.Errorf("no allow-all selection for the covered remote: %+v", p.Ingress.Proxy[0].Selections)
	}
}

func TestL7Merge(t *testing.T) {
	second := strings.Replace(strings.Replace(ds, "rule1", "rule2", 1), "/v1/request-landing", "/v1/status", 1)
	e := newEnv(t, Config{}, ds, second)
	p := e.policy("default/org=empire,class=deathstar")
	if len(p.Ingress.Proxy) != 1 || len(p.Ingress.Proxy[0].Selections) != 1 {
		t.Fatalf("proxy = %+v", p.Ingress.Proxy)
	}
	s := p.Ingress.Proxy[0].Selections[0]
	if len(s.Rules.HTTP) != 2 || len(s.Origins) != 2 {
		t.Errorf("merged = %+v", s)
	}
	// A different L7 type on the same port is a conflict, reported.
	kafka := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule3}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: alliance}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {kafka: [{role: produce}]}
`
	e.upsert(kafka)
	p = e.policy("default/org=empire,class=deathstar")
	if len(p.Ingress.Errors) != 1 || !strings.Contains(p.Ingress.Errors[0], "conflict") {
		t.Errorf("errors = %v", p.Ingress.Errors)
	}
}

// The seed's deny table: L3 allow from the client plus a deny on port 80.
func TestDenyPrecedence(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	c, s := "default/app=client", "default/app=server"
	e.check(c, s, ProtocolTCP, 81, "allowed")
	e.check(c, s, ProtocolTCP, 80, "denied")
	e.check(c, s, ProtocolICMP, 8, "allowed")
	// Normalization: the wildcard deny on 80 partly overlaps the
	// client's all-ports allow, so a derived deny exists for the client.
	p := e.policy(s)
	cid := e.id(c)
	if !slices.ContainsFunc(p.Ingress.Deny, func(x L4Entry) bool { return x.Remote == cid && x.Port == 80 }) {
		t.Errorf("no derived deny for the client: %v", p.Ingress.Deny)
	}
	// A deny covering an allow removes the allow.
	e.upsert(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
`)
	e.check(c, s, ProtocolTCP, 81, "denied")
	if p := e.policy(s); slices.ContainsFunc(p.Ingress.Allow, func(x L4Entry) bool { return x.Remote == cid }) {
		t.Errorf("covered allow kept: %v", p.Ingress.Allow)
	}
	// Deny wins over L7 too.
	e.upsert(ds)
}

func TestEnforcementModes(t *testing.T) {
	pol := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
`
	a, b, c := "default/app=a", "default/app=b", "default/app=c"
	e := newEnv(t, Config{}, pol)
	e.check(a, b, ProtocolTCP, 1, "allowed")
	e.check(c, b, ProtocolTCP, 1, "denied")
	e.check(b, c, ProtocolTCP, 1, "allowed") // egress of b and ingress of c unrestricted

	e = newEnv(t, Config{Mode: ModeAlways}, pol)
	e.check(a, b, ProtocolTCP, 1, "denied") // a's egress is default-deny
	e.check(c, a, ProtocolTCP, 1, "denied")

	e = newEnv(t, Config{Mode: ModeNever}, pol)
	e.check(c, b, ProtocolTCP, 1, "allowed")

	e = newEnv(t, Config{Audit: true}, pol)
	e.check(c, b, ProtocolTCP, 1, "audited")
}

func TestEnableDefaultDeny(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false, ingress: false}
  egress:
  - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchPattern: "*"}]}
`)
	a, dns := "default/app=a", "kube-system/k8s-app=kube-dns"
	e.check(a, dns, ProtocolUDP, 53, "redirect")
	e.check(a, "default/app=b", ProtocolTCP, 80, "allowed")
	if p := e.policy(a); p.Egress.Enforced || p.Ingress.Enforced {
		t.Error("enableDefaultDeny false must not enforce")
	}
	// An explicit enableDefaultDeny: true with no section enforces.
	e.upsert(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lock}
spec:
  endpointSelector: {matchLabels: {app: a}}
  enableDefaultDeny: {ingress: true}
`)
	e.check("default/app=b", a, ProtocolTCP, 80, "denied")
}

func TestEmptyIngressRuleIsDefaultDeny(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all}
spec:
  endpointSelector: {matchLabels: {role: restricted}}
  ingress: [{}]
`)
	e.check("default/app=x", "default/role=restricted", ProtocolTCP, 80, "denied")
	e.check("default/role=restricted", "default/app=x", ProtocolTCP, 80, "allowed")
}

func TestEntities(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ents}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEntities: [cluster]
  ingress:
  - fromEntities: [world]
`)
	a := "default/app=a"
	z := e.id("other/app=z")
	p := e.policy(a)
	for id, want := range map[NumericIdentity]VerdictWant{
		IdentityHost: allowed, IdentityRemoteNode: allowed, IdentityInit: allowed, IdentityHealth: allowed,
		IdentityUnmanaged: allowed, IdentityIngress: allowed, IdentityKubeAPIServer: allowed,
		IdentityWorld: denied, z: allowed,
	} {
		got := p.Egress.Lookup(id, ProtocolTCP, 443, false).Verdict
		if (got == VerdictAllowed) != bool(want) {
			t.Errorf("egress to %v: %v", id, got)
		}
	}
	for id, want := range map[NumericIdentity]VerdictWant{
		IdentityWorld: allowed, IdentityWorldIPv4: allowed, IdentityWorldIPv6: allowed, IdentityHost: denied,
	} {
		got := p.Ingress.Lookup(id, ProtocolTCP, 443, false).Verdict
		if (got == VerdictAllowed) != bool(want) {
			t.Errorf("ingress from %v: %v", id, got)
		}
	}
}

type VerdictWant bool

const (
	allowed VerdictWant = true
	denied  VerdictWant = false
)

func TestCIDR(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr}
spec:
  endpointSelector: {matchLabels: {app: s}}
  egress:
  - toCIDR: [20.1.1.1]
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
`)
	p := e.policy("default/app=s")
	snap := e.repo.Snapshot()
	for ip, want := range map[string]VerdictWant{
		"20.1.1.1": allowed, "20.1.1.2": denied, "10.1.2.3": allowed, "10.96.0.10": denied, "10.111.0.1": denied, "10.112.0.1": allowed,
	} {
		id := snap.IdentityForIP(netip.MustParseAddr(ip))
		got := p.Egress.Lookup(id, ProtocolTCP, 443, false).Verdict
		if (got == VerdictAllowed) != bool(want) {
			t.Errorf("%s (identity %v): %v", ip, id, got)
		}
	}
	ids := snap.CIDRIdentities()
	if len(ids) != 3 || !ids[0].ID.IsLocal() {
		t.Errorf("CIDR identities = %+v", ids)
	}
	// Deleting the policy releases the CIDR identities.
	e.repo.Delete(Key{Kind: KindCNP, Namespace: "default", Name: "cidr"})
	if n := len(e.repo.Snapshot().CIDRIdentities()); n != 0 {
		t.Errorf("%d CIDR identities left", n)
	}
}

func TestFQDN(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {app: bot}}
  egress:
  - toFQDNs: [{matchName: api.github.com}, {matchPattern: "*.example.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`)
	bot := e.ep("default/app=bot")
	snap := e.repo.Snapshot()
	sels := snap.FQDNSelectors()
	if len(sels) != 2 {
		t.Fatalf("selectors = %v", sels)
	}
	ls, ok := FQDNLabels("API.github.com.", sels)
	if !ok || !ls.Has(SourceFQDN, "matchName:api.github.com") || !ls.Has(SourceReserved, "world") {
		t.Fatalf("labels = %v", ls)
	}
	ident, _, err := e.repo.Allocator().Allocate(ls)
	if err != nil || !ident.ID.IsLocal() || ident.ID < MinLocal {
		t.Fatalf("identity %v %v", ident, err)
	}
	e.repo.UpsertIdentity(ident)
	p, _ := e.repo.Resolve(bot)
	if v := p.Egress.Lookup(ident.ID, ProtocolTCP, 443, false).Verdict; v != VerdictAllowed {
		t.Errorf("443: %v", v)
	}
	if v := p.Egress.Lookup(ident.ID, ProtocolTCP, 80, false).Verdict; v != VerdictDenied {
		t.Errorf("80: %v", v)
	}
	if _, ok := FQDNLabels("github.com", sels); ok {
		t.Error("github.com must not match")
	}
	if got := FQDNSelectorLabels([]string{"matchName:api.github.com"}); got.String() != ls.String() {
		t.Errorf("FQDNSelectorLabels = %v, want %v", got, ls)
	}
	e.repo.DeleteIdentity(ident.ID)
	p, _ = e.repo.Resolve(bot)
	if len(p.Egress.Allow) != 0 {
		t.Errorf("allow after identity removal: %v", p.Egress.Allow)
	}
}

func TestNamedPorts(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: http-alt}]}]
`)
	e.ep("default/app=web", NamedPort{Name: "http-alt", Port: 8080, Protocol: ProtocolTCP})
	e.check("default/app=c", "default/app=web", ProtocolTCP, 8080, "allowed")
	e.check("default/app=c", "default/app=web", ProtocolTCP, 80, "denied")
	// Changing the named port recomputes.
	e.ep("default/app=web", NamedPort{Name: "http-alt", Port: 9090, Protocol: ProtocolTCP})
	e.check("default/app=c", "default/app=web", ProtocolTCP, 9090, "allowed")
	e.check("default/app=c", "default/app=web", ProtocolTCP, 8080, "denied")
}

func TestToServices(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: svc}
spec:
  endpointSelector: {matchLabels: {id: app2}}
  egress:
  - toServices:
    - k8sService: {serviceName: myservice, namespace: default}
    - k8sServiceSelector: {selector: {matchLabels: {env: staging}}, namespace: another-namespace}
`)
	app2, backend, other := "default/id=app2", "default/app=backend", "another-namespace/app=stg"
	e.check(app2, backend, ProtocolTCP, 80, "denied") // service unknown yet
	e.repo.UpsertService(ServiceInfo{Name: "myservice", Namespace: "default", Selector: map[string]string{"app": "backend"}})
	e.check(app2, backend, ProtocolTCP, 80, "allowed")
	e.check(app2, other, ProtocolTCP, 80, "denied")
	e.repo.UpsertService(ServiceInfo{Name: "s2", Namespace: "another-namespace", Labels: map[string]string{"env": "staging"}, Selector: map[string]string{"app": "stg"}})
	e.check(app2, other, ProtocolTCP, 80, "allowed")
	// A service without selector: its endpoint IPs.
	e.repo.UpsertService(ServiceInfo{Name: "myservice", Namespace: "default", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.0.2.5/32")}})
	e.check(app2, backend, ProtocolTCP, 80, "denied")
	id := e.repo.Snapshot().IdentityForIP(netip.MustParseAddr("192.0.2.5"))
	if got := e.verdict(app2, "", 0, id, ProtocolTCP, 80); got != "allowed" {
		t.Errorf("selectorless service: %s", got)
	}
}

// TestToServicesNamespace: as Cilium, a toServices entry without a namespace
// matches the service of that name (or those labels) in every namespace,
// not only the policy's; the selector wins over the name when both are set.
func TestToServicesNamespace(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: svc, namespace: team}
spec:
  endpointSelector: {}
  egress:
  - toServices:
    - k8sService: {serviceName: db}
    - k8sService: {serviceName: ignored}
      k8sServiceSelector: {selector: {matchLabels: {tier: cache}}}
    - {}
`)
	client := "team/app=client"
	e.repo.UpsertService(ServiceInfo{Name: "db", Namespace: "storage", Selector: map[string]string{"app": "db"}})
	e.repo.UpsertService(ServiceInfo{Name: "ignored", Namespace: "team", Selector: map[string]string{"app": "ignored"}})
	e.repo.UpsertService(ServiceInfo{Name: "redis", Namespace: "other", Labels: map[string]string{"tier": "cache"}, Selector: map[string]string{"app": "redis"}})
	e.check(client, "storage/app=db", ProtocolTCP, 5432, "allowed")
	e.check(client, "other/app=redis", ProtocolTCP, 6379, "allowed")
	e.check(client, "team/app=ignored", ProtocolTCP, 80, "denied")
	e.check(client, "team/app=else", ProtocolTCP, 80, "denied")
}

// fromRequires applies to every rule selecting the endpoint.
func TestRequires(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: req}
spec:
  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l3}
spec:
  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
  - fromEntities: [world]
`)
	p := "default/env=prod"
	e.check("default/env=prod,role=frontend", p, ProtocolTCP, 80, "allowed")
	e.check("default/env=dev,role=frontend", p, ProtocolTCP, 80, "denied")
	if got := e.verdict("", p, IdentityWorld, 0, ProtocolTCP, 80); got != "denied" {
		t.Errorf("world with requirements: %s", got)
	}
}

func TestHostPolicy(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {matchLabels: {node-access: ssh}}
  ingress:
  - fromEntities: [cluster]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  - fromEntities: [world]
    icmps: [{fields: [{type: 8}]}]
`)
	hostEP := e.ep("/reserved:host=,node:node-access=ssh")
	p, _ := e.repo.Resolve(hostEP)
	if p.Identity != IdentityHost || !p.Ingress.Enforced {
		t.Fatalf("host policy = %+v", p)
	}
	for _, c := range []struct {
		from  NumericIdentity
		proto Protocol
		port  uint16
		want  Verdict
	}{
		{IdentityWorld, ProtocolTCP, 22, VerdictAllowed},
		{IdentityWorld, ProtocolTCP, 80, VerdictDenied},
		{IdentityWorld, ProtocolICMP, 8, VerdictAllowed},
		{IdentityRemoteNode, ProtocolTCP, 80, VerdictAllowed},
	} {
		if got := p.Ingress.Lookup(c.from, c.proto, c.port, false).Verdict; got != c.want {
			t.Errorf("%v %v/%d: %v, want %v", c.from, c.proto, c.port, got, c.want)
		}
	}
	// A pod is not selected by a host policy.
	if pp := e.policy("default/node-access=ssh"); pp.Ingress.Enforced {
		t.Error("host policy selected a pod")
	}
}

func TestIncremental(t *testing.T) {
	a := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {role: client}}]}]
`
	b := strings.ReplaceAll(a, "app: a", "app: b")
	b = strings.Replace(b, "name: a", "name: b", 1)
	e := newEnv(t, Config{}, a, b)
	pa1, pb1 := e.policy("default/app=a"), e.policy("default/app=b")
	s1 := e.repo.Snapshot()
	if e.repo.Snapshot() != s1 {
		t.Error("unchanged repository returned a new snapshot")
	}
	// Updating policy a leaves b's policy untouched.
	e.upsert(strings.Replace(a, "role: client", "role: admin", 1))
	pa2, pb2 := e.policy("default/app=a"), e.policy("default/app=b")
	if pb2 != pb1 {
		t.Error("b recomputed on an update of a")
	}
	if pa2 == pa1 || pa2.Ingress == pa1.Ingress {
		t.Error("a not recomputed")
	}
	// A new client identity enters b's selection.
	e.check("default/role=client", "default/app=b", ProtocolTCP, 1, "allowed")
	e.check("default/role=client", "default/app=a", ProtocolTCP, 1, "denied")
	// Old snapshots are immutable.
	if p, _ := s1.Endpoint(e.ep("default/app=a")); p != pa1 {
		t.Error("old snapshot changed")
	}
	// Delete.
	if !e.repo.Delete(Key{Kind: KindCNP, Namespace: "default", Name: "a"}) {
		t.Fatal("delete failed")
	}
	if p := e.policy("default/app=a"); p.Ingress.Enforced {
		t.Error("policy a still enforced after delete")
	}
	if e.repo.Delete(Key{Kind: KindCNP, Namespace: "default", Name: "a"}) {
		t.Error("second delete succeeded")
	}
	// Endpoint removal.
	id := e.ep("default/role=client")
	e.repo.DeleteEndpoint(id)
	delete(e.eps, "default/role=client")
	if _, ok := e.repo.Resolve(id); ok {
		t.Error("deleted endpoint still resolved")
	}
	if len(e.policy("default/app=b").Ingress.Allow) != 0 {
		t.Error("deleted identity still allowed")
	}
}

func TestInitEntityAndReservedSelectors(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: init}
spec:
  endpointSelector: {matchLabels: {app: dns}}
  ingress:
  - fromEntities: [init]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - fromEndpoints: [{matchLabels: {"reserved:host": ""}}]
`)
	p := e.policy("kube-system/app=dns")
	if v := p.Ingress.Lookup(IdentityInit, ProtocolUDP, 53, false).Verdict; v != VerdictAllowed {
		t.Errorf("init: %v", v)
	}
	if v := p.Ingress.Lookup(IdentityHost, ProtocolTCP, 1, false).Verdict; v != VerdictAllowed {
		t.Errorf("host: %v", v)
	}
	if v := p.Ingress.Lookup(IdentityInit, ProtocolTCP, 53, false).Verdict; v != VerdictDenied {
		t.Errorf("init tcp: %v", v)
	}
}

// Snapshots are immutable while the repository changes (run with -race).
func TestSnapshotImmutableConcurrent(t *testing.T) {
	e := newEnv(t, Config{}, ds)
	ds0 := e.ep("default/org=empire,class=deathstar")
	e.ep("default/org=empire,class=tiefighter")
	snap := e.repo.Snapshot()
	p0, _ := snap.Endpoint(ds0)
	remotes := slices.Clone(p0.Ingress.Proxy[0].Selections[0].Remotes)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			p, _ := snap.Endpoint(ds0)
			p.Ingress.Lookup(IdentityWorld, ProtocolTCP, 80, false)
			_ = slices.Clone(p.Ingress.Proxy[0].Selections[0].Remotes)
		}
	}()
	for i := 0; i < 50; i++ {
		id := uint64(100 + i)
		if _, err := e.repo.UpsertEndpoint(Endpoint{ID: id, Labels: K8sLabels(map[string]string{"org": "empire", "n": strings.Repeat("x", i+1)}, "default")}); err != nil {
			t.Fatal(err)
		}
		e.repo.Snapshot()
	}
	<-done
	if got := p0.Ingress.Proxy[0].Selections[0].Remotes; !slices.Equal(got, remotes) {
		t.Errorf("old snapshot changed: %v -> %v", remotes, got)
	}
	p1, _ := e.repo.Resolve(ds0)
	if n := len(p1.Ingress.Proxy[0].Selections[0].Remotes); n != 52 { // deathstar, tiefighter and 50 more empire endpoints
		t.Errorf("new snapshot has %d remotes", n)
	}
}

func TestNamespaceLabelsIgnoredInCNP(t *testing.T) {
	doc := `apiVersion: cilium.io/v2
kind: KIND
metadata: {name: nsl, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: blue}}]
`
	ps, err := Parse("t.yaml", []byte(strings.Replace(doc, "KIND", KindCNP, 1)))
	if err != nil || len(ps[0].Warnings) != 1 {
		t.Fatalf("%v %v", err, ps)
	}
	e := newEnv(t, Config{}, strings.Replace(doc, "KIND", KindCNP, 1))
	// Ignored: the selector is {} in ns1, every pod of ns1.
	e.check("ns1/app=web", "ns1/app=db", ProtocolTCP, 5432, "allowed")
	e.check("ns2/app=web", "ns1/app=db", ProtocolTCP, 5432, "denied")
	// In a clusterwide policy it selects pods carrying the label.
	e = newEnv(t, Config{}, strings.Replace(doc, "KIND", KindCCNP, 1))
	e.check("ns2/app=web,io.cilium.k8s.namespace.labels.team=blue", "ns1/app=db", ProtocolTCP, 5432, "allowed")
	e.check("ns1/app=web", "ns1/app=db", ProtocolTCP, 5432, "denied")
}

// Lifecycle: rules selecting reserved:init apply to initializing endpoints.
func TestInitEndpoint(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: init}
spec:
  endpointSelector: {matchLabels: {"reserved:init": ""}}
  ingress:
  - fromEntities: [host]
  egress:
  - toEntities: [all]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`)
	id, err := e.repo.UpsertEndpoint(Endpoint{ID: 99, Labels: NewLabels(Label{Source: SourceReserved, Key: "init"})})
	if err != nil || id.ID != IdentityInit {
		t.Fatalf("init endpoint identity %v %v", id, err)
	}
	p, _ := e.repo.Resolve(99)
	if v := p.Ingress.Lookup(IdentityHost, ProtocolTCP, 1, false).Verdict; v != VerdictAllowed {
		t.Errorf("host: %v", v)
	}
	if v := p.Ingress.Lookup(IdentityWorld, ProtocolTCP, 1, false).Verdict; v != VerdictDenied {
		t.Errorf("world: %v", v)
	}
	if v := p.Egress.Lookup(IdentityWorld, ProtocolUDP, 53, false).Verdict; v != VerdictAllowed {
		t.Errorf("dns: %v", v)
	}
	// Reserved identities stay in selections exactly once.
	snap := e.repo.Snapshot()
	for _, s := range e.repo.selections {
		if !slices.IsSorted(s.ids) || len(slices.Compact(slices.Clone(s.ids))) != len(s.ids) {
			t.Errorf("selection %s = %v", s.p.key(), s.ids)
		}
	}
	e.repo.DeleteEndpoint(99)
	if _, ok := e.repo.Snapshot().Identity(IdentityInit); !ok {
		t.Error("reserved identity dropped")
	}
	_ = snap
}

func TestProtocolAnyExpands(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toPorts: [{ports: [{port: "80"}]}]
`)
	p := e.policy("default/app=a")
	if len(p.Egress.Allow) != 3 {
		t.Fatalf("entries = %v", p.Egress.Allow)
	}
	for proto, want := range map[Protocol]Verdict{ProtocolTCP: VerdictAllowed, ProtocolUDP: VerdictAllowed, ProtocolSCTP: VerdictAllowed, ProtocolICMP: VerdictDenied} {
		if got := p.Egress.Lookup(IdentityWorld, proto, 80, false).Verdict; got != want {
			t.Errorf("%v/80: %v", proto, got)
		}
	}
}

func TestAllocateFQDN(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {app: bot}}
  egress:
  - toFQDNs: [{matchPattern: "*.github.com"}]
  - toCIDR: [140.82.0.0/16]
`)
	bot := e.ep("default/app=bot")
	id, err := e.repo.AllocateFQDN([]string{"matchPattern:*.github.com"})
	if err != nil || !NumericIdentity(id).IsLocal() {
		t.Fatalf("%d %v", id, err)
	}
	again, _ := e.repo.AllocateFQDN([]string{"matchPattern:*.github.com"})
	if again != id {
		t.Errorf("same selectors, identities %d and %d", id, again)
	}
	// No collision with the CIDR identity of the same range.
	for _, c := range e.repo.Snapshot().CIDRIdentities() {
		if uint32(c.ID) == id {
			t.Errorf("FQDN identity %d collides with CIDR %v", id, c.Prefix)
		}
	}
	p, _ := e.repo.Resolve(bot)
	if v := p.Egress.Lookup(NumericIdentity(id), ProtocolTCP, 443, false).Verdict; v != VerdictAllowed {
		t.Errorf("fqdn identity: %v", v)
	}
	e.repo.ReleaseFQDN(id)
	p, _ = e.repo.Resolve(bot)
	if v := p.Egress.Lookup(NumericIdentity(id), ProtocolTCP, 443, false).Verdict; v != VerdictDenied {
		t.Errorf("released identity: %v", v)
	}
	if _, err := e.repo.AllocateFQDN(nil); err == nil {
		t.Error("no selectors accepted")
	}
}

// An empty fromEndpoints selector in a clusterwide policy selects every
// pod, not world.
func TestCCNPEmptyPeerSelector(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: pods}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{}]
`)
	e.check("other/app=web", "ns1/app=db", ProtocolTCP, 5432, "allowed")
	if got := e.verdict("", "ns1/app=db", IdentityWorld, 0, ProtocolTCP, 5432); got != "denied" {
		t.Errorf("world: %s", got)
	}
	if got := e.verdict("", "ns1/app=db", IdentityHost, 0, ProtocolTCP, 5432); got != "denied" {
		t.Errorf("host: %s", got)
	}
}

// TestDenyWithoutDefaultDeny: enableDefaultDeny: {ingress: false} keeps the
// endpoint out of default deny, but its ingressDeny rules still deny (the
// seed: deny policies take precedence over allows in every case).
func TestDenyWithoutDefaultDeny(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: open}
spec:
  endpointSelector: {matchLabels: {app: open}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {role: other}}]
`)
	open := "default/app=open"
	e.check("default/app=client", open, ProtocolTCP, 80, "allowed")
	e.check("default/app=visitor", open, ProtocolTCP, 80, "allowed")
	e.check("default/role=other", open, ProtocolTCP, 80, "denied")
}

// TestToGroupsSelectsNothing: a toGroups rule with ports selects nobody by
// itself (its derivative policy carries the addresses); it never turns
// into "every peer on these ports".
func TestToGroupsSelectsNothing(t *testing.T) {
	e := newEnv(t, Config{}, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: groups}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toGroups: [{aws: {securityGroupsIds: [sg-1]}}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`)
	e.check("default/app=a", "default/app=b", ProtocolTCP, 443, "denied")
}

// TestHeaderMatchSecretNamespace: a headerMatches secret without a
// namespace is read from the policy's namespace (as Cilium does); one that
// names its namespace keeps it.
func TestHeaderMatchSecretNamespace(t *testing.T) {
	const pol = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tokens, namespace: sw}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - path: /a
          headerMatches:
          - {name: X-Plain, value: v}
          - {name: X-Token, secret: {name: tok}}
          - {name: X-Other, secret: {namespace: vault, name: other}}
`
	e := newEnv(t, Config{}, pol)
	p := e.policy("sw/class=deathstar")
	if len(p.Ingress.Proxy) != 1 || len(p.Ingress.Proxy[0].Selections) != 1 {
		t.Fatalf("proxy ports = %+v", p.Ingress.Proxy)
	}
	hms := p.Ingress.Proxy[0].Selections[0].Rules.HTTP[0].HeaderMatches
	if len(hms) != 3 || hms[0].Secret != nil || hms[0].Value != "v" {
		t.Fatalf("headerMatches = %+v", hms)
	}
	if s := hms[1].Secret; s == nil || s.Namespace != "sw" || s.Name != "tok" {
		t.Errorf("secret without a namespace = %+v; want sw/tok", s)
	}
	if s := hms[2].Secret; s == nil || s.Namespace != "vault" || s.Name != "other" {
		t.Errorf("secret with its namespace = %+v; want vault/other", s)
	}
}
