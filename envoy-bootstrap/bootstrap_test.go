package bootstrap

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string // "" = valid
	}{
		{"ok", Config{NodeID: "n", XDSSocket: "/run/x.sock", AdminAddress: "127.0.0.1:9901"}, ""},
		{"no node", Config{XDSSocket: "/s", AdminAddress: "127.0.0.1:1"}, "NodeID is required"},
		{"no socket", Config{NodeID: "n", AdminAddress: "127.0.0.1:1"}, "XDSSocket is required"},
		{"admin not loopback", Config{NodeID: "n", XDSSocket: "/s", AdminAddress: "0.0.0.0:9901"}, "must be a loopback address"},
		{"admin garbage", Config{NodeID: "n", XDSSocket: "/s", AdminAddress: "localhost"}, "AdminAddress"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v; want %q", err, tc.want)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.json")
	c := Config{NodeID: "node-1", XDSSocket: "/run/ward/xds.sock", AdminAddress: "127.0.0.1:9901", ModuleDir: "/opt/ward"}
	if err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v; want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(p)
	// protojson randomizes whitespace: compare the parsed document.
	var m struct {
		Node  struct{ ID string }
		Admin struct {
			Address struct{ SocketAddress struct{ Address string } }
		}
		DynamicResources struct {
			LdsConfig struct{ Ads *struct{} }
		}
		StaticResources struct {
			Clusters []struct {
				LoadAssignment struct {
					Endpoints []struct {
						LbEndpoints []struct {
							Endpoint struct {
								Address struct{ Pipe struct{ Path string } }
							}
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	pipe := ""
	if cs := m.StaticResources.Clusters; len(cs) == 1 && len(cs[0].LoadAssignment.Endpoints) == 1 && len(cs[0].LoadAssignment.Endpoints[0].LbEndpoints) == 1 {
		pipe = cs[0].LoadAssignment.Endpoints[0].LbEndpoints[0].Endpoint.Address.Pipe.Path
	}
	if m.Node.ID != "node-1" || pipe != "/run/ward/xds.sock" || m.DynamicResources.LdsConfig.Ads == nil || m.Admin.Address.SocketAddress.Address != "127.0.0.1" {
		t.Errorf("bootstrap: node %q, xds pipe %q, lds over ads %v, admin %q; want node-1, /run/ward/xds.sock, true, 127.0.0.1\n%s",
			m.Node.ID, pipe, m.DynamicResources.LdsConfig.Ads != nil, m.Admin.Address.SocketAddress.Address, b)
	}
	if env := c.Env(); len(env) != 1 || env[0] != "ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/opt/ward" {
		t.Errorf("Env() = %v", env)
	}
}
