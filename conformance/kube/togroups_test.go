package kube

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wardproxy/ward/agent"
	agentkube "github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/conformance/moto"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy/groups/aws"
)

// TestToGroupsDerivativeCNP: a CiliumNetworkPolicy with toGroups on the
// real API server, resolved against moto: wardd enforces the derivative
// (the pod reaches the database whose interface is in the security group)
// and writes it back as a derivative CiliumNetworkPolicy beside its parent,
// as Cilium's operator does (NAME-groups-HASH, labelled derivative, owned
// by the parent, its toCIDRSet the interface's address); deleting the
// parent deletes the derivative object too.
func TestToGroupsDerivativeCNP(t *testing.T) {
	srv := moto.Start(t)
	api := kubetest.Shared(t)
	root := testenv.Root(t)
	for _, crd := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		api.ApplyFile(t, filepath.Join(root, "deploy/helm/ward/crds", crd))
	}
	const ns = "kube-togroups"
	api.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	_, dc := api.Clients(t)
	ctx, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	n := node.New(t,
		node.PodSpec{Name: "app", Namespace: ns, Labels: map[string]string{"app": "api"}},
		node.PodSpec{Name: "db", Namespace: ns, Labels: map[string]string{"app": "db"}, Unmanaged: true})
	db := n.Pods["db"]
	n.Serve(t, "db", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("db")) }), ":5432", ":5433")
	sg, _ := srv.Interface(ctx, t, "database", netip.PrefixFrom(db.IP, 24).Masked().String(), db.IP.String())
	n.Config.Kubernetes = &agentkube.Config{Kubeconfig: api.Kubeconfig(), NodeName: "kube-togroups-node", HealthInterval: "200ms"}
	n.Config.ToGroups = &agent.ToGroupsConfig{AWS: &aws.Config{Region: moto.Region, Endpoint: srv.Endpoint}, Interval: "1s"}
	n.Start(t, 48900, 9489)

	api.ApplyYAML(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-db, namespace: `+ns+`}
spec:
  endpointSelector: {matchLabels: {app: api}}
  egress:
  - toGroups:
    - aws:
        securityGroupsIds: [`+sg+`]
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
`)
	curl := func(port string) string { return n.Curl(ctx, "app", "http://"+db.IP.String()+port+"/") }
	node.Eventually(t, "the database in the group to be reachable", func() bool { return curl(":5432") == "db" })
	if got := curl(":5433"); got != "error" {
		t.Errorf("port 5433 = %q; want dropped", got)
	}
	var derivative *unstructured.Unstructured
	node.Eventually(t, "the derivative CiliumNetworkPolicy on the API server", func() bool {
		l, err := dc.Resource(agentkube.CNPResource).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: "io.cilium.network.policy.kind=derivative"})
		if err != nil || len(l.Items) != 1 {
			return false
		}
		derivative = &l.Items[0]
		return true
	})
	if !strings.HasPrefix(derivative.GetName(), "to-db-groups-") {
		t.Errorf("derivative name %q", derivative.GetName())
	}
	if refs := derivative.GetOwnerReferences(); len(refs) != 1 || refs[0].Name != "to-db" || refs[0].Kind != "CiliumNetworkPolicy" {
		t.Errorf("owner references %+v", refs)
	}
	egress, _, _ := unstructured.NestedSlice(derivative.Object, "spec", "egress")
	b, _ := json.Marshal(egress)
	if len(egress) != 1 || !strings.Contains(string(b), `"cidr":"`+db.IP.String()+`/32"`) {
		t.Errorf("derivative egress %v; want toCIDRSet %s/32", egress, db.IP)
	}
	// The parent deleted: the derivative goes too.
	if err := dc.Resource(agentkube.CNPResource).Namespace(ns).Delete(ctx, "to-db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the derivative to be deleted with its parent", func() bool {
		l, err := dc.Resource(agentkube.CNPResource).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: "io.cilium.network.policy.kind=derivative"})
		return err == nil && len(l.Items) == 0
	})
}
