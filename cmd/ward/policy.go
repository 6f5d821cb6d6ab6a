package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/dirsource"
	"github.com/wardproxy/ward/policy/flowcheck"
)

const policyUsage = `usage:
  ward policy validate [--enable-node-selector-labels] [--enable-extended-ip-protocols] FILE|DIR...
      Check CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy files
      (*.yaml, *.yml, *.json; directories recursively, *.flows.json skipped;
      each argument is one policy set, where a policy defined twice is an
      error). fromNodes/toNodes and the protocols VRRP/IGMP are refused
      unless the flag of the node option they need is given, as wardd
      refuses them. Exit 0 when all are valid, 1 with the errors otherwise.
  ward policy test --policy FILE|DIR [--policy ...] --flows FLOWS.json [--mode default|always|never] [--audit]
      Evaluate the flows offline; print one JSON object per line:
      {"name":..., "verdict":"allowed"|"denied", "reason":...}
  ward policy get [LABEL...] [--state-dir DIR] [-o table|json]
      The live agent's rules (those carrying every LABEL, source:key=value
      or key=value) with their source (directory, k8s) and labels; -o json
      prints them as Cilium's ` + "`cilium policy get`" + ` does.
  ward policy suggest [--state-dir DIR] [--since D] [--last N] | --file FLOWS.json
      The CiliumNetworkPolicy that would allow the AUDIT and policy-DROPPED
      flows wardd recorded (or of a saved ` + "`hubble observe -o json`" + `).
`

func runPolicy(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	switch args[0] {
	case "validate":
		return runPolicyValidate(args[1:], stdout, stderr)
	case "test":
		return runPolicyTest(args[1:], stdout, stderr)
	case "get":
		return policyGet(args[1:], stdout, stderr)
	case "suggest":
		return policySuggest(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	}
	fmt.Fprintf(stderr, "ward policy: unknown command %q\n%s", args[0], policyUsage)
	return 2
}

func runPolicyValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward policy validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var feat policy.Features
	fs.BoolVar(&feat.NodeSelectorLabels, "enable-node-selector-labels", false, "accept fromNodes/toNodes (the node option enableNodeSelectorLabels)")
	fs.BoolVar(&feat.ExtendedIPProtocols, "enable-extended-ip-protocols", false, "accept the protocols VRRP and IGMP (the node option enableExtendedIPProtocols)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	args = fs.Args()
	if len(args) == 0 {
		fmt.Fprint(stderr, "ward policy validate: no FILE or DIR given\n"+policyUsage)
		return 2
	}
	bad := false
	n := 0
	for _, path := range args {
		// Each argument is one policy set: a key defined twice in it is
		// an error.
		seen := map[policy.Key]string{}
		files, err := dirsource.Files(path)
		if err != nil {
			fmt.Fprintf(stderr, "%v\n", err)
			bad = true
			continue
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				fmt.Fprintf(stderr, "%v\n", err)
				bad = true
				continue
			}
			ps, err := policy.Parse(f, data)
			for _, p := range ps {
				for _, w := range p.Warnings {
					fmt.Fprintf(stderr, "warning: %s\n", withLine(w))
				}
				err = errors.Join(err, p.CheckFeatures(feat))
			}
			if err != nil {
				printErrors(stderr, err)
				bad = true
				continue
			}
			for _, p := range ps {
				if prev, dup := seen[p.Key()]; dup {
					fmt.Fprintf(stderr, "%s: %s: policy %s is already defined in %s\n", f, p.Metadata.Name, p.Key(), prev)
					bad = true
				}
				seen[p.Key()] = f
			}
			n += len(ps)
		}
	}
	if bad {
		return 1
	}
	fmt.Fprintf(stdout, "%d policies valid\n", n)
	return 0
}

// printErrors prints each joined error on its own line.
func printErrors(w io.Writer, err error) {
	if fes := policy.FieldErrors(err); len(fes) > 0 && len(fes) == countLeaves(err) {
		for _, fe := range fes {
			fmt.Fprintln(w, withLine(fe))
		}
		return
	}
	fmt.Fprintln(w, err.Error())
}

// withLine is the error with " (line N)" when the line is known.
func withLine(fe *policy.FieldError) string {
	if fe.Line > 0 {
		return fmt.Sprintf("%s (line %d)", fe.Error(), fe.Line)
	}
	return fe.Error()
}

func countLeaves(err error) int {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		n := 0
		for _, e := range j.Unwrap() {
			n += countLeaves(e)
		}
		return n
	}
	return 1
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func runPolicyTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var policies multiFlag
	fs.Var(&policies, "policy", "policy FILE or DIR (repeatable)")
	flowsPath := fs.String("flows", "", "flows JSON file")
	mode := fs.String("mode", "default", "enforcement mode: default, always or never")
	audit := fs.Bool("audit", false, "policy audit mode for every endpoint")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if len(policies) == 0 || *flowsPath == "" || fs.NArg() > 0 {
		fmt.Fprint(stderr, "ward policy test: need --policy and --flows\n"+policyUsage)
		return 2
	}
	cfg := policy.Config{Mode: policy.EnforcementMode(*mode)}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "ward policy test: --mode: %v\n", err)
		return 2
	}
	ps, err := dirsource.Load(policies...)
	if err != nil {
		printErrors(stderr, err)
		return 1
	}
	for _, p := range ps {
		for _, w := range p.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", withLine(w))
		}
	}
	data, err := os.ReadFile(*flowsPath)
	if err != nil {
		fmt.Fprintf(stderr, "ward policy test: %v\n", err)
		return 1
	}
	flows, err := flowcheck.ParseFlows(data)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", *flowsPath, err)
		return 1
	}
	results, err := flowcheck.Evaluate(ps, flows, flowcheck.Options{Mode: cfg.Mode, Audit: *audit})
	if err != nil {
		fmt.Fprintf(stderr, "ward policy test: %v\n", err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	code := 0
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(stderr, "ward policy test: %v\n", err)
			return 1
		}
		if r.Verdict == flowcheck.VerdictError {
			fmt.Fprintf(stderr, "ward policy test: %s: %s\n", r.Name, r.Reason)
			code = 1
		}
	}
	return code
}
