package kube

// The policy status writer. Each node writes, through the status
// subresource with server-side apply under its own field manager
// (ward-<node>), so that nodes never overwrite each other:
//
//	status:
//	  conditions:                # Cilium 1.18's shape (kubectl get cnp: VALID)
//	  - type: Valid
//	    status: "True" | "False"
//	    reason: PolicyValid | PolicyInvalid
//	    message: <the field-path errors>
//	    lastTransitionTime: ...
//	  nodes:                     # Cilium's per-node status (ward's CRDs)
//	    <node>:
//	      ok: true|false
//	      error: <the field-path errors>
//	      enforcing: true        # rules of the object are in force here
//	      enforcingEndpoints: N  # local endpoints with entries from it
//	      localPolicyRevision: R
//	      lastUpdated: ...
//
// The Valid condition is the same on every node (the parser is), so the
// nodes' applies share it. Cilium 1.18's own CRDs have no status.nodes
// (the API server refuses the apply): there the writer learns it from the
// refusal and writes the condition alone. An invalid
// version also gets a Warning Event, reason PolicyInvalid, once per
// generation: a node that finds the same error already in the condition
// (another node's, or its own before a restart) records none. Writes that fail (the API server is down) are
// retried until they succeed; a status is rewritten only when what it
// says changes (not for a new policy revision alone).

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wardproxy/ward/policy"
)

// Condition reasons and the Event reason.
const (
	ReasonValid   = "PolicyValid"
	ReasonInvalid = "PolicyInvalid"
)

// StatusWriter writes the policies' status. Create it with
// NewStatusWriter, run it with Run, Trigger it after each publish.
type StatusWriter struct {
	c    *Client
	pols *Policies
	log  *slog.Logger
	// enforcing returns, per policy, how many of this node's endpoints
	// have entries from it, and the repository revision published.
	enforcing func() (map[policy.Key]int, uint64)
	trigger   chan struct{}
	written   map[policy.Key]nodeStatus
	evented   map[string]bool // uid/generation
	// noNodes: the CRDs' schema has no status.nodes (Cilium's own CRDs),
	// learnt from the API server's refusal; only the condition is written.
	noNodes bool
}

// nodeStatus is what one node says of one object.
type nodeStatus struct {
	UID        string
	Generation int64
	Valid      bool
	Message    string
	Enforcing  bool
	Endpoints  int
}

// NewStatusWriter returns the writer of p's objects' status. enforcing
// is called after each Trigger (not concurrently with itself).
func (c *Client) NewStatusWriter(p *Policies, enforcing func() (map[policy.Key]int, uint64)) *StatusWriter {
	return &StatusWriter{c: c, pols: p, log: c.log.With("source", "kubernetes policy status"), enforcing: enforcing,
		trigger: make(chan struct{}, 1), written: map[policy.Key]nodeStatus{}, evented: map[string]bool{}}
}

// Trigger asks for a status round (after a publish).
func (w *StatusWriter) Trigger() {
	select {
	case w.trigger <- struct{}{}:
	default:
	}
}

// Run writes the status after each Trigger or change of the policy
// objects, retrying failed writes every second, until ctx is done.
func (w *StatusWriter) Run(ctx context.Context) error {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	changed := w.pols.Changed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.trigger:
		case <-changed:
		case <-retry.C:
		}
		// Taken before the round: a change during the round closes it, so
		// the next wait does not miss it.
		changed = w.pols.Changed()
		if failed := w.round(ctx); failed > 0 && ctx.Err() == nil {
			retry.Reset(time.Second)
		}
	}
}

// round writes what changed; it returns how many writes failed.
func (w *StatusWriter) round(ctx context.Context) int {
	counts, rev := w.enforcing()
	states := w.pols.States()
	seen := map[policy.Key]bool{}
	failed := 0
	for _, st := range states {
		seen[st.Key] = true
		want := nodeStatus{UID: st.UID, Generation: st.Generation, Valid: st.Err == nil, Enforcing: st.Enforced, Endpoints: counts[st.Key]}
		if st.Err != nil {
			want.Message = ErrorMessage(st.Err)
			if st.Enforced {
				want.Message += fmt.Sprintf(" (the rules of generation %d stay enforced)", st.GoodGeneration)
			}
		}
		if !want.Valid && !w.evented[evKey(st)] && reported(st.Conditions, want.Message) {
			// Another node (or this one before a restart) has reported
			// this version already: one Event is enough.
			w.evented[evKey(st)] = true
		}
		if !want.Valid && !w.evented[evKey(st)] {
			if err := w.event(ctx, st, want.Message); err != nil {
				failed++
				w.log.Warn("policy event", "policy", st.Key.String(), "error", err)
			} else {
				w.evented[evKey(st)] = true
			}
		}
		if w.written[st.Key] == want {
			continue
		}
		if w.current(st, want) {
			// The object says it already (this node before a restart):
			// no write, so a restarted node does not rewrite every
			// policy's status.
			w.written[st.Key] = want
			continue
		}
		if err := w.apply(ctx, st, want, rev); err != nil {
			failed++
			w.log.Warn("policy status", "policy", st.Key.String(), "error", err)
			continue
		}
		w.written[st.Key] = want
	}
	for k := range w.written {
		if !seen[k] {
			delete(w.written, k)
		}
	}
	return failed
}

// current tells whether the object's status (as last seen) already says
// want for this node: the Valid condition and, unless the schema has no
// status.nodes, this node's entry.
func (w *StatusWriter) current(st PolicyState, want nodeStatus) bool {
	status, msg := "True", "valid"
	if !want.Valid {
		status, msg = "False", want.Message
	}
	cond := false
	for _, c := range st.Conditions {
		if m, ok := c.(map[string]any); ok && m["type"] == "Valid" && m["status"] == status && m["message"] == msg {
			cond = true
		}
	}
	if !cond {
		return false
	}
	if w.noNodes {
		return true
	}
	n := st.NodeStatus
	if n == nil {
		return false
	}
	errMsg, _ := n["error"].(string)
	if !want.Valid {
		msg = want.Message
	} else {
		msg = ""
	}
	return n["ok"] == want.Valid && n["enforcing"] == want.Enforcing && errMsg == msg &&
		fmt.Sprint(n["enforcingEndpoints"]) == fmt.Sprint(want.Endpoints)
}

// reported tells whether the object's conditions already say Valid=False
// with msg.
func reported(conds []any, msg string) bool {
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Valid" && m["status"] == "False" && m["message"] == msg {
			return true
		}
	}
	return false
}

func evKey(st PolicyState) string { return fmt.Sprintf("%s/%d", st.UID, st.Generation) }

// apply writes one object's status (server-side apply, status
// subresource, field manager ward-<node>).
func (w *StatusWriter) apply(ctx context.Context, st PolicyState, want nodeStatus, rev uint64) error {
	now := time.Now().UTC().Format(time.RFC3339)
	status, reason, msg := "True", ReasonValid, "valid"
	if !want.Valid {
		status, reason, msg = "False", ReasonInvalid, want.Message
	}
	transition := now
	for _, c := range st.Conditions {
		if m, ok := c.(map[string]any); ok && m["type"] == "Valid" && m["status"] == status {
			if t, ok := m["lastTransitionTime"].(string); ok && t != "" {
				transition = t
			}
		}
	}
	node := map[string]any{"ok": want.Valid, "enforcing": want.Enforcing, "enforcingEndpoints": want.Endpoints,
		"localPolicyRevision": rev, "lastUpdated": now}
	if !want.Valid {
		node["error"] = want.Message
	}
	md := map[string]any{"name": st.Key.Name}
	if st.Key.Namespace != "" {
		md["namespace"] = st.Key.Namespace
	}
	statusObj := map[string]any{
		"conditions": []any{map[string]any{"type": "Valid", "status": status, "reason": reason, "message": msg, "lastTransitionTime": transition}},
	}
	if !w.noNodes {
		statusObj["nodes"] = map[string]any{w.c.cfg.NodeName: node}
	}
	err := w.patchStatus(ctx, st.Key, md, statusObj)
	if err != nil && !w.noNodes && strings.Contains(err.Error(), ".status.nodes: field not declared in schema") {
		// Cilium's CRDs: no per-node status; the condition alone.
		w.noNodes = true
		w.log.Info("the policy CRDs have no status.nodes (Cilium's CRDs?): writing the Valid condition only")
		delete(statusObj, "nodes")
		err = w.patchStatus(ctx, st.Key, md, statusObj)
	}
	return err
}

// patchStatus server-side applies status to one object's status
// subresource.
func (w *StatusWriter) patchStatus(ctx context.Context, k policy.Key, md, status map[string]any) error {
	body, err := json.Marshal(map[string]any{"apiVersion": policy.APIVersion, "kind": k.Kind, "metadata": md, "status": status})
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	gvr := CNPResource
	if k.Kind == policy.KindCCNP {
		gvr = CCNPResource
	}
	force := true
	_, err = w.c.Dynamic.Resource(gvr).Namespace(k.Namespace).Patch(ctx, k.Name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: w.fieldManager(), Force: &force}, "status")
	if err != nil {
		return fmt.Errorf("apply status: %w", err)
	}
	return nil
}

func (w *StatusWriter) fieldManager() string { return "ward-" + w.c.cfg.NodeName }

// event records a Warning Event PolicyInvalid on the object (a
// clusterwide policy's in namespace default, as kubectl does).
func (w *StatusWriter) event(ctx context.Context, st PolicyState, msg string) error {
	ns := st.Key.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	t := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: st.Key.Name + ".", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{APIVersion: policy.APIVersion, Kind: st.Key.Kind, Namespace: st.Key.Namespace,
			Name: st.Key.Name, UID: types.UID(st.UID), ResourceVersion: st.ResourceVersion},
		Reason: ReasonInvalid, Message: truncate(msg, 1024), Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "wardd", Host: w.c.cfg.NodeName},
		FirstTimestamp: t, LastTimestamp: t, Count: 1,
		ReportingController: "ward.io/wardd", ReportingInstance: w.c.cfg.NodeName,
	}
	if _, err := w.c.Kube.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create event: %w", err)
	}
	return nil
}

// ErrorMessage is a policy error as the status says it: the field-path
// errors ("spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator:
// ...") joined by "; ", without the file and policy name every one of
// them repeats.
func ErrorMessage(err error) string {
	fes := policy.FieldErrors(err)
	if len(fes) == 0 {
		return err.Error()
	}
	parts := make([]string, 0, len(fes))
	for _, fe := range fes {
		s := fe.Msg
		if fe.Path != "" {
			s = fe.Path + ": " + s
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
