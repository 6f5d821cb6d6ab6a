package docs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy"
)

// block is a fenced code block of a page.
type block struct {
	page, lang string
	tags       []string
	file       string // the file=PATH tag
	line       int    // of the opening fence
	body       string
}

func (b block) has(tag string) bool { return slices.Contains(b.tags, tag) }

// blocks returns the fenced code blocks of a page, in order.
func blocks(t *testing.T, page string) []block {
	t.Helper()
	f, err := os.Open(page)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []block
	var cur *block
	var body strings.Builder
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if !strings.HasPrefix(line, "```") {
			if cur != nil {
				body.WriteString(line + "\n")
			}
			continue
		}
		if cur != nil {
			cur.body = body.String()
			out = append(out, *cur)
			cur = nil
			continue
		}
		words := strings.Fields(strings.TrimPrefix(line, "```"))
		b := block{page: filepath.Base(page), line: n}
		if len(words) > 0 {
			b.lang, b.tags = words[0], words[1:]
		}
		for _, w := range b.tags {
			if p, ok := strings.CutPrefix(w, "file="); ok {
				b.file = p
			}
		}
		cur = &b
		body.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: code block not closed", page, cur.line)
	}
	return out
}

func strictJSON(js []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func pages(t *testing.T) []string {
	t.Helper()
	ps, err := filepath.Glob("*.md")
	if err != nil || len(ps) == 0 {
		t.Fatalf("no pages: %v", err)
	}
	return ps
}

// TestExamplesParse: every YAML and JSON block of the guide is a node
// config that agent.LoadConfig accepts or a policy that policy.Parse
// accepts, as its tag says; an untagged one is an error, so no example
// escapes the check.
func TestExamplesParse(t *testing.T) {
	n := 0
	for _, page := range pages(t) {
		for _, b := range blocks(t, page) {
			if b.lang != "yaml" && b.lang != "json" {
				continue
			}
			n++
			where := b.page + ":" + strconv.Itoa(b.line)
			switch {
			case b.has("node-config"):
				p := filepath.Join(t.TempDir(), "node."+b.lang)
				if err := os.WriteFile(p, []byte(b.body), 0o600); err != nil {
					t.Fatal(err)
				}
				if _, err := agent.LoadConfig(p); err != nil {
					t.Errorf("%s: node config: %v", where, err)
				}
			case b.has("endpoint"):
				// An endpointsDir file: one endpoint or a list.
				js, err := yaml.YAMLToJSON([]byte(b.body))
				if err != nil {
					t.Errorf("%s: endpoint: %v", where, err)
					continue
				}
				var eps []agent.Endpoint
				if bytes.HasPrefix(bytes.TrimSpace(js), []byte("[")) {
					err = strictJSON(js, &eps)
				} else {
					var ep agent.Endpoint
					err = strictJSON(js, &ep)
					eps = append(eps, ep)
				}
				if err == nil {
					cfg := agent.Config{Endpoints: eps}
					err = cfg.Validate()
				}
				if err != nil {
					t.Errorf("%s: endpoint: %v", where, err)
				}
			case b.has("policy"):
				ps, err := policy.Parse(where, []byte(b.body))
				if err != nil {
					t.Errorf("%s: policy: %v", where, err)
				} else if len(ps) == 0 {
					t.Errorf("%s: policy block holds no policy", where)
				}
			default:
				t.Errorf("%s: %s block without a node-config, endpoint or policy tag (the docs tests check tagged blocks only)", where, b.lang)
			}
		}
	}
	if n == 0 {
		t.Fatal("no YAML or JSON block found")
	}
}

// jsonNames returns the JSON field names of t and of the structs it holds.
func jsonNames(tb testing.TB, t reflect.Type, out map[string]bool) {
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
		jsonNames(tb, t.Elem(), out)
		return
	case reflect.Struct:
	default:
		return
	}
	if t == reflect.TypeFor[dns.Config]() {
		// Its JSON form is its own (MarshalJSON): every tunable set.
		var c dns.Config
		v := reflect.ValueOf(&c).Elem()
		for i := range v.NumField() {
			switch f := v.Field(i); f.Kind() {
			case reflect.Int, reflect.Int64:
				f.SetInt(1)
			case reflect.Bool:
				f.SetBool(true)
			}
		}
		b, err := json.Marshal(c)
		if err != nil {
			tb.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			tb.Fatal(err)
		}
		for k := range m {
			out[k] = true
		}
		return
	}
	if t.PkgPath() != reflect.TypeFor[agent.Config]().PkgPath() {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name != "" {
			out[name] = true
		}
		jsonNames(tb, f.Type, out)
	}
}

// TestNodeConfigReference: node-config.md names every field of the node
// configuration (agent.Config and what it holds, the dns block included)
// and every wardd flag.
func TestNodeConfigReference(t *testing.T) {
	doc, err := os.ReadFile("node-config.md")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	jsonNames(t, reflect.TypeFor[agent.Config](), names)
	if len(names) < 20 {
		t.Fatalf("found %d field names; the reflection walk is broken", len(names))
	}
	for name := range names {
		if !bytes.Contains(doc, []byte("`"+name+"`")) {
			t.Errorf("node-config.md does not document the field `%s`", name)
		}
	}
	src, err := os.ReadFile(filepath.Join("..", "cmd", "wardd", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	flags := regexp.MustCompile(`fs\.(?:String|Bool|Int|Duration|Uint|Var)\("([a-z0-9-]+)"`).FindAllSubmatch(src, -1)
	if len(flags) < 5 {
		t.Fatalf("found %d wardd flags; the pattern is broken", len(flags))
	}
	for _, m := range flags {
		if !bytes.Contains(doc, []byte("`--"+string(m[1]))) {
			t.Errorf("node-config.md does not document the wardd flag --%s", m[1])
		}
	}
}

// expectLine is a walkthrough line whose output is checked.
var expectLine = regexp.MustCompile(`^(.*\S)\s+# => (.*)$`)

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// walkthrough turns a page's walkthrough into bash: the sh walkthrough
// blocks in order, the file blocks written under $DEMO; blocks tagged
// cleanup come apart, to run after every page of the walkthrough.
func walkthrough(t *testing.T, page string) (script string, checks int, cleanup string) {
	t.Helper()
	var sb, cb strings.Builder
	for _, b := range blocks(t, page) {
		w := &sb
		if b.has("cleanup") {
			w = &cb
		}
		switch {
		case b.file != "":
			w.WriteString("mkdir -p \"$(dirname \"$DEMO/" + b.file + "\")\"\n")
			w.WriteString("cat > \"$DEMO/" + b.file + "\" <<'__WARD_DOC_EOF__'\n" + b.body + "__WARD_DOC_EOF__\n")
		case b.lang == "sh" && b.has("walkthrough"):
			w.WriteString("echo '== " + b.page + ":" + strconv.Itoa(b.line) + "'\n")
			for _, line := range strings.Split(b.body, "\n") {
				if m := expectLine.FindStringSubmatch(line); m != nil {
					line = "__expect " + shellQuote(m[2]) + " " + shellQuote(m[1])
					checks++
				}
				w.WriteString(line + "\n")
			}
		}
	}
	return sb.String(), checks, cb.String()
}

// prelude makes the machine private to the walkthrough (it runs under
// unshare in new network, mount and PID namespaces): /run (netns names,
// the state directory), /tmp, /dev/shm (Envoy's shared memory) and bpffs
// are fresh, the binaries just built are on PATH, loopback is up. Nothing
// reaches the machine's devices, routing or pins; the PID namespace ends
// every process the walkthrough leaves running.
const prelude = `set -e -o pipefail
__root=$PWD
mount -t tmpfs tmpfs /run
mkdir -p /run/ward-bin /run/ward-checkout && cp "$WARD_TEST_BIN"/wardd "$WARD_TEST_BIN"/ward /run/ward-bin/
mount --bind "$__root" /run/ward-checkout
mount -t tmpfs tmpfs /tmp
# A checkout under /tmp stays where it was (the page runs from it).
mkdir -p "$__root" && mount --bind /run/ward-checkout "$__root" && cd "$__root"
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
export PATH=/run/ward-bin:$PATH
trap 'rc=$?; if [ $rc != 0 ]; then echo "--- wardd.log"; tail -n 40 /tmp/ward-demo/wardd.log 2>/dev/null; echo "--- envoy.log"; tail -n 30 /run/ward/envoy.log 2>/dev/null; fi' EXIT
# __expect WANT CMD: CMD's output (spaces squeezed) must become WANT
# within a minute (a policy edit takes effect asynchronously).
__expect() {
  local got end=$((SECONDS + 60))
  while :; do
    got=$(eval "$2" 2>&1 | tr -s ' \t\r\n' ' ' | sed 's/^ //; s/ $//') || true
    if [ "$got" = "$1" ]; then echo "ok: $2"; return 0; fi
    [ $SECONDS -lt $end ] || break
    sleep 0.5
  done
  echo "FAILED: $2"; echo "  got:  $got"; echo "  want: $1"
  return 1
}
`

// TestRunWithoutKubernetes runs run-without-kubernetes.md for real: the
// pods, the node config, the policy, wardd with the eBPF datapath and
// Envoy, ward status, the live policy edit, ward bpf cleanup, with curl
// from the pods checking each step's verdict.
func TestRunWithoutKubernetes(t *testing.T) {
	runWalkthrough(t, 5, "run-without-kubernetes.md")
}

// runWalkthrough runs the walkthroughs of pages as one script, in order
// (their `cleanup` blocks last), under unshare with the prelude, and
// checks that it passes at least minChecks `# =>` checks, all of them.
func runWalkthrough(t *testing.T, minChecks int, pages ...string) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, c := range []string{"unshare", "ip", "curl", "python3", "go"} {
		testenv.RequireCommand(t, c)
	}
	testenv.EnvoyPath(t)
	testenv.File(t, "build/libward.so", "run `make build`")
	var script, cleanup strings.Builder
	checks := 0
	for _, page := range pages {
		body, n, tail := walkthrough(t, page)
		script.WriteString(body)
		cleanup.WriteString(tail)
		checks += n
	}
	if checks < minChecks {
		t.Fatalf("the walkthrough checks %d outputs; want the pages' checks", checks)
	}
	root := testenv.Root(t)
	// The script runs in the checkout (its working directory stays
	// reachable when the private /tmp hides a checkout under /tmp).
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	for _, cmd := range []string{"wardd", "ward"} {
		build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, cmd), "./cmd/"+cmd)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", cmd, err, out)
		}
	}
	cmd := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount", "--propagation", "private",
		"bash", "-c", prelude+script.String()+cleanup.String())
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "WARD_TEST_BIN="+bin)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough: %v\n%s", err, out)
	}
	if got := strings.Count(string(out), "\nok: "); got != checks {
		t.Errorf("walkthrough passed %d checks; want %d\n%s", got, checks, out)
	}
	t.Logf("walkthrough:\n%s", out)
}

// TestDNSDefaults: the defaults node-config.md gives for the dns block are
// filters/dns's (the package's constants are the one definition).
func TestDNSDefaults(t *testing.T) {
	doc, err := os.ReadFile("node-config.md")
	if err != nil {
		t.Fatal(err)
	}
	// | `name` | `default` ...
	row := regexp.MustCompile("(?m)^\\| `([a-zA-Z]+)` \\| `([^`]+)`")
	got := map[string]string{}
	_, section, _ := strings.Cut(string(doc), "## DNS proxy")
	section, _, _ = strings.Cut(section, "\n## ")
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		got[m[1]] = m[2]
	}
	dur := func(d time.Duration) string { return d.String() }
	want := map[string]string{
		"rejectResponseCode":           dns.RejectRefused,
		"proxyResponseMaxDelay":        dur(dns.DefaultUpdateTimeout),
		"minTTL":                       dur(0),
		"maxTTL":                       dur(dns.DefaultMaxTTL),
		"maxIPsPerHostname":            strconv.Itoa(dns.DefaultMaxIPsPerName),
		"maxDeferredConnectionDeletes": strconv.Itoa(dns.DefaultMaxZombies),
		"maxNamesPerEndpoint":          strconv.Itoa(dns.DefaultMaxNamesPerEndpoint),
		"maxNames":                     strconv.Itoa(dns.DefaultMaxNames),
		"gcInterval":                   dur(dns.DefaultGCInterval),
		"forwardTimeout":               dur(dns.DefaultForwardTimeout),
		"concurrencyLimit":             strconv.Itoa(dns.DefaultMaxInFlight),
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("node-config.md: no default for dns.%s", name)
			continue
		}
		// Durations compare by value ("24h" is "24h0m0s").
		if gd, err := time.ParseDuration(g); err == nil {
			if wd, err := time.ParseDuration(w); err == nil && gd == wd {
				continue
			}
		}
		if g != w {
			t.Errorf("node-config.md: dns.%s default %q; filters/dns says %q", name, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("node-config.md's dns table has %d rows; the test knows %d options (a new option needs its default checked here)", len(got), len(want))
	}
}
