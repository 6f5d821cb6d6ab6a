package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/wardproxy/ward/agent/api"
)

// policyGet prints the live agent's policy rules (all, or those carrying
// every label given): a table of the rules with their source and labels,
// or with -o json Cilium's `cilium policy get` shape (the rules as
// written, each with its labels, the source among them: "directory" for a
// policy of the policy directory, "k8s" for a Kubernetes object).
func policyGet(args []string, stdout, stderr io.Writer) int {
	f := newAgentFlags("ward policy get", stderr)
	labels, ok := f.parse(args)
	if !ok {
		return 2
	}
	q := url.Values{}
	for _, l := range labels {
		q.Add("labels", l)
	}
	path := api.PolicyPath
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var pr api.PolicyRules
	if err := agentGet(*f.stateDir, path, &pr); err != nil {
		fmt.Fprintf(stderr, "ward policy get: %v\n", err)
		return 1
	}
	if f.json() {
		rules := make([]json.RawMessage, 0, len(pr.Rules))
		for _, r := range pr.Rules {
			rules = append(rules, r.Rule)
		}
		return printJSON(stdout, stderr, "ward policy get", rules)
	}
	fmt.Fprintf(stdout, "Revision: %d\n", pr.Revision)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POLICY\tSOURCE\tORIGIN\tLABELS")
	for _, r := range pr.Rules {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Policy, r.Source, r.Origin, strings.Join(r.Labels, " "))
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "ward policy get: %v\n", err)
		return 1
	}
	return 0
}
