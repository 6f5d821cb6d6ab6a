package policy

import (
	"strings"
	"testing"
)

// TestEntitiesWithoutAddressesWarn: a rule naming an entity no address
// carries under wardd (init, unmanaged, ingress) is accepted with a
// warning naming the field and saying it selects nothing; the entities
// wardd gives addresses (health among them) carry no such warning.
func TestEntitiesWithoutAddressesWarn(t *testing.T) {
	for _, tc := range []struct {
		name, entity string
		warn         bool
	}{
		{name: "init", entity: "init", warn: true},
		{name: "unmanaged", entity: "unmanaged", warn: true},
		{name: "ingress", entity: "ingress", warn: true},
		{name: "health", entity: "health"},
		{name: "host", entity: "host"},
		{name: "world", entity: "world"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [` + tc.entity + `]
`
			ps, err := Parse("p.yaml", []byte(y))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var got []string
			for _, w := range ps[0].Warnings {
				if strings.Contains(w.Msg, "selects nothing under wardd") {
					got = append(got, w.Path+": "+w.Msg)
				}
			}
			if tc.warn != (len(got) == 1) {
				t.Fatalf("warnings for fromEntities: [%s] = %q; want one: %v", tc.entity, got, tc.warn)
			}
			if tc.warn && !strings.Contains(got[0], "spec.ingress[0].fromEntities[0]") {
				t.Errorf("warning %q does not name the field spec.ingress[0].fromEntities[0]", got[0])
			}
		})
	}
}
