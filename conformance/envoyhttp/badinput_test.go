package envoyhttp

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// TestBadInput sends malformed and hostile HTTP over raw TCP to the real
// Envoy with ward.http: Envoy's codec rejects what it must, the filter never
// allows by mistake, Envoy never crashes, and every request of a pipelined
// or keep-alive connection is checked.
func TestBadInput(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	var hits atomic.Int64
	up := serve(t, func(ctx context.Context, l net.Listener) {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, "upstream:"+r.URL.Path)
		})}
		go func() { <-ctx.Done(); srv.Close() }()
		srv.Serve(l)
	})
	res, ports := front(t, s, "ep", 80, up, false, map[string]uint32{"c": 7}, "c")
	s.PushEnvoy(t, res)
	s.PushPolicy(t, []*npds.NetworkPolicy{{Name: "ep", IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{
		RemoteIdentities: []uint32{7},
		L7:               npds.HTTP(l7.HTTPRule{Path: "/public.*"}),
	}}}}}}, nil)
	addr := "127.0.0.1:" + itoa(ports["c"])

	// raw sends bytes and returns the status lines of every response read
	// until the connection closes or goes quiet.
	raw := func(req string) []string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(req))
		var status []string
		br := bufio.NewReader(c)
		for {
			// Envoy closes on a half-close, so keep writing open and stop
			// when the connection goes quiet.
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return status
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			status = append(status, resp.Status[:3]+" "+resp.Header.Get("x-ward-path"))
		}
	}
	codes := func(ss []string) string {
		var out []string
		for _, s := range ss {
			out = append(out, strings.TrimSpace(s))
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name, req string
		want      string // comma-separated status codes, in order
		upstream  int64  // requests the upstream may see
	}{
		// Envoy answers the pipelined requests in order; after ward's local
		// reply it may close the connection (then the third is never
		// served, and never reaches the upstream unchecked).
		{"pipelined allow/deny/allow", "GET /public/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /private HTTP/1.1\r\nHost: a\r\n\r\nGET /public/2 HTTP/1.1\r\nHost: a\r\n\r\n", "200,403|200,403,200", 2},
		{"duplicate content-length", "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", "400", 0},
		{"content-length and chunked", "POST /private HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /private HTTP/1.1\r\nHost: a\r\n\r\n", "", 0},
		{"HTTP/0.9", "GET /public/x\r\n\r\n", "", 0},
		{"no path", "GET HTTP/1.1\r\nHost: a\r\n\r\n", "400", 0},
		{"huge header", "GET /public/x HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", "431", 0},
		{"invalid header bytes", "GET /public/x HTTP/1.1\r\nHost: a\r\nX-Bad: \x00\x01\r\n\r\n", "400", 0},
		{"smuggled private after allowed", "GET /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 34\r\n\r\nGET /private HTTP/1.1\r\nHost: a\r\n\r\n", "200", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h0 := hits.Load()
			got := codes(raw(tc.req))
			if tc.want != "" && !oneOf(got, tc.want) {
				t.Errorf("status codes %q; want %q", got, tc.want)
			}
			if strings.Contains(got, "200") && !strings.Contains(tc.want, "200") {
				t.Errorf("got a 200 for %q", tc.name)
			}
			if n := hits.Load() - h0; n > tc.upstream {
				t.Errorf("the upstream saw %d requests; want at most %d", n, tc.upstream)
			}
		})
	}

	// A client that resets mid-body: no crash, the next requests are
	// checked as usual.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("POST /public/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + strings.Repeat("x", 1000)))
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	if got := codes(raw("GET /private HTTP/1.1\r\nHost: a\r\n\r\n")); got != "403" {
		t.Errorf("after a reset: %q; want 403", got)
	}
	if got := codes(raw("GET /public/ok HTTP/1.1\r\nHost: a\r\n\r\n")); got != "200" {
		t.Errorf("after a reset: %q; want 200", got)
	}
	if n := s.Proc.Starts(); n != 1 {
		t.Errorf("envoy started %d times; want 1", n)
	}
}

func oneOf(got, want string) bool {
	for _, w := range strings.Split(want, "|") {
		if got == w {
			return true
		}
	}
	return false
}
