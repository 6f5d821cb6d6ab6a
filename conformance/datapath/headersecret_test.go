package datapath

import (
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/secrets"
)

// headerSecretPolicy: the deathstar's API needs the token held by the
// secret ds-token (read from the policy's namespace, default) in
// X-Token; the landing pad replaces a wrong X-Ship with the secret's
// value (REPLACE) instead of denying.
const headerSecretPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: deathstar-token
spec:
  endpointSelector:
    matchLabels: {class: deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {class: tiefighter}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /v1/.*
          headerMatches:
          - {name: X-Token, secret: {name: ds-token}}
        - method: POST
          path: /v1/request-landing
          headerMatches:
          - {name: X-Ship, secret: {name: ds-token}, mismatch: REPLACE}
`

// TestWarddHeaderMatchSecret: headerMatches with a secret through wardd,
// the secret in the node's secretsDir (one item, any key name, as
// Cilium's): the right token passes, a wrong or missing one gets 403; a
// REPLACE puts the secret's value upstream; a rotated secret takes over
// (the old value denied); a deleted secret, with no fallback value,
// denies every request and `ward status` names it. The value appears in
// nothing wardd or Envoy write.
func TestWarddHeaderMatchSecret(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}})
	n.Serve(t, "deathstar", deathstar.NewEcho(), ":80")
	ref := secrets.Ref{Namespace: "default", Name: "ds-token"}
	n.Config.SecretsDir = t.TempDir()
	const first, second = "tok-7f3a9c1e", "tok-2b8d4e60"
	if err := secrets.Write(n.Config.SecretsDir, ref, map[string][]byte{"token": []byte(first)}); err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "token.yaml", headerSecretPolicy)
	n.Start(t, 49970, 9502)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + n.Pods["deathstar"].IP.String()
	get := func(token string) string {
		args := []string{"-o", "/dev/null", "-w", "%{http_code}", url + "/v1/healthz"}
		if token != "" {
			args = append([]string{"-H", "X-Token: " + token}, args...)
		}
		return n.Curl(c, "tiefighter", args...)
	}
	node.Eventually(t, "the secret's token to be allowed", func() bool { return get(first) == "200" })
	for _, tok := range []string{"", "wrong", first + "x"} {
		if got := get(tok); got != "403" {
			t.Errorf("GET with X-Token %q = %s; want 403", tok, got)
		}
	}

	// REPLACE: a wrong X-Ship reaches the deathstar as the secret's value.
	out := n.Curl(c, "tiefighter", "-X", "POST", "-H", "X-Ship: forged", url+"/v1/request-landing")
	var echo deathstar.Echo
	if err := json.Unmarshal([]byte(out), &echo); err != nil {
		t.Fatalf("POST with a wrong X-Ship = %q; want the echo: %v", out, err)
	}
	if got := echo.Headers["x-ship"]; len(got) != 1 || got[0] != first {
		t.Errorf("upstream X-Ship = %v; want the secret's value (REPLACE)", got)
	}

	// Rotation: the new value takes over, the old one is denied.
	if err := secrets.Write(n.Config.SecretsDir, ref, map[string][]byte{"token": []byte(second)}); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the rotated token to be allowed", func() bool { return get(second) == "200" })
	if got := get(first); got != "403" {
		t.Errorf("GET with the old token after rotation = %s; want 403", got)
	}

	// Deleted: no fallback value, so nothing matches; the status says why.
	if err := os.RemoveAll(filepath.Join(n.Config.SecretsDir, ref.Namespace, ref.Name)); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the deleted secret's token to be denied", func() bool { return get(second) == "403" })
	node.Eventually(t, "ward status to name the missing secret", func() bool {
		return strings.Contains(strings.Join(n.Agent.Status().Errors, "\n"), "default/ds-token")
	})

	// Neither value is in anything wardd or Envoy wrote (logs, state).
	err := filepath.WalkDir(n.StateDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, v := range []string{first, second} {
			if strings.Contains(string(b), v) {
				t.Errorf("%s holds the secret's value", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
