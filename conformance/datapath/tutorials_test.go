package datapath

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy/flowcheck"
)

// TestTutorials plays the seed's tutorials from examples/ through wardd:
// every TCP flow between endpoints of a tutorial's flows file becomes a
// real request with curl from a pod carrying the source's labels to a pod
// carrying the destination's, with the tutorial's policy files in the
// watched policy directory. Each request must get the verdict of the
// tutorial's golden file (what `ward policy test` answers): allowed → the
// server's 200; denied → dropped in BPF or Envoy's 403.
//
// One tutorial: go test -run 'TestTutorials/elasticsearch' -v ./conformance/datapath
func TestTutorials(t *testing.T) {
	for i, dir := range []string{"deathstar/l3-l4", "deathstar/l7", "elasticsearch"} {
		t.Run(strings.ReplaceAll(dir, "/", "-"), func(t *testing.T) { playTutorial(t, dir, 36000+100*i, 9360+i) })
	}
}

// TestLanguageExamples plays the policy-language examples (examples/
// language: default deny disabled, deny rules, entities, L4 ports and
// ranges, L7 HTTP, namespaces, requirements, service accounts) through
// wardd the same way: every TCP flow between endpoints of each example
// gets the verdict `ward policy test` gives it. The flows with other peers
// (CIDRs, entities, FQDNs) and the other protocols are covered by `ward
// policy test` and the dedicated suites (CIDRs: TestEgressCIDR...).
func TestLanguageExamples(t *testing.T) {
	for i, dir := range []string{"default-deny-disabled", "deny", "entities", "l4", "l7-http", "namespaces", "requires", "serviceaccounts"} {
		t.Run(dir, func(t *testing.T) { playTutorial(t, "language/"+dir, 39000+100*i, 9720+i) })
	}
}

func playTutorial(t *testing.T, dir string, table, priority int) {
	root := filepath.Join(testenv.Root(t), "examples", dir)
	flowFiles, _ := filepath.Glob(filepath.Join(root, "*.flows.json"))
	if len(flowFiles) != 1 {
		t.Fatalf("%s: want one flows file, have %v", dir, flowFiles)
	}
	var flows []flowcheck.Flow
	b, err := os.ReadFile(flowFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &flows); err != nil {
		t.Fatal(err)
	}
	want := goldenVerdicts(t, strings.TrimSuffix(flowFiles[0], ".flows.json")+".expected.jsonl")

	// One pod per distinct endpoint (namespace and labels) of the flows.
	type played struct {
		f        flowcheck.Flow
		src, dst string
	}
	var specs []node.PodSpec
	podOf := map[string]string{}
	pod := func(p flowcheck.Peer) string {
		ns := p.Namespace
		if ns == "" {
			ns = "default"
		}
		key := ns + "|" + fmt.Sprint(slices.Sorted(maps.Keys(p.Labels)), p.Labels)
		if name, ok := podOf[key]; ok {
			return name
		}
		name := fmt.Sprintf("p%d", len(specs))
		podOf[key] = name
		specs = append(specs, node.PodSpec{Name: name, Labels: p.Labels, Namespace: ns})
		return name
	}
	isEndpoint := func(p flowcheck.Peer) bool { return p.CIDR == "" && p.Entity == "" && p.FQDN == "" }
	var plays []played
	ports := map[string]map[int]bool{}
	for _, f := range flows {
		if !isEndpoint(f.From) || !isEndpoint(f.To) || (f.Protocol != "" && !strings.EqualFold(f.Protocol, "TCP")) || f.Kafka != nil || f.DNS != nil || f.SNI != "" {
			continue // not a TCP flow between endpoints: `ward policy test` covers it
		}
		p := played{f: f, src: pod(f.From), dst: pod(f.To)}
		if ports[p.dst] == nil {
			ports[p.dst] = map[int]bool{}
		}
		ports[p.dst][f.Port] = true
		plays = append(plays, p)
	}
	if len(plays) == 0 {
		t.Fatalf("%s: no flow to play", dir)
	}
	n := node.New(t, specs...)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	for name, ps := range ports {
		for port := range ps {
			n.Serve(t, name, ok, ":"+strconv.Itoa(port))
		}
	}
	policies, _ := filepath.Glob(filepath.Join(root, "*.yaml"))
	for _, p := range policies {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		n.WritePolicy(t, filepath.Base(p), string(b))
	}
	n.Start(t, table, priority)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(p played) string {
		args := []string{"-w", " %{http_code}"}
		path := "/"
		if h := p.f.HTTP; h != nil {
			if h.Method != "" {
				args = append(args, "-X", h.Method)
			}
			if h.Path != "" {
				path = h.Path
			}
			if h.Host != "" {
				args = append(args, "-H", "Host: "+h.Host)
			}
			for k, v := range h.Headers {
				args = append(args, "-H", k+": "+v)
			}
		}
		return n.Curl(c, p.src, append(args, fmt.Sprintf("http://%s:%d%s", n.Pods[p.dst].IP, p.f.Port, path))...)
	}
	// In force once the first allowed flow answers (the agent has
	// published and Envoy has its listeners).
	for _, p := range plays {
		if want[p.f.Name] == "allowed" {
			node.Eventually(t, "the tutorial's policy to be in force", func() bool { return curl(p) == "ok 200" })
			break
		}
	}
	for _, p := range plays {
		got := curl(p)
		switch want[p.f.Name] {
		case "allowed":
			if got != "ok 200" {
				t.Errorf("%s: %q; want allowed (ok 200)", p.f.Name, got)
			}
		case "denied":
			if got != "error" && got != "Access denied 403" {
				t.Errorf("%s: %q; want denied (dropped or Envoy's 403)", p.f.Name, got)
			}
		default:
			t.Errorf("%s: no golden verdict", p.f.Name)
		}
	}
	t.Logf("%s: %d of %d flows played through wardd", dir, len(plays), len(flows))
}

// goldenVerdicts reads a tutorial's expected verdicts (name → verdict).
func goldenVerdicts(t *testing.T, path string) map[string]string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct{ Name, Verdict string }
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out[r.Name] = r.Verdict
	}
	return out
}
