package kafka

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/wardproxy/ward/proxylib"
)

// proxy is a test-only loopback TCP proxy that runs ward's proxylib.Stream
// with a parser factory between clients and one broker listener, the way
// the Envoy network filter does: every read is handed to the Stream, and
// the Stream decides what reaches the other side.
type proxy struct {
	ln       net.Listener
	upstream string
	factory  proxylib.ParserFactory
	identity uint32
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	nextID   uint64
}

// listenProxy binds the proxy's listener (so its address can be advertised
// before the broker starts); serve starts it.
func listenProxy(t *testing.T, identity uint32) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, identity: identity, conns: map[net.Conn]struct{}{}}
	t.Cleanup(p.close)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) serve(upstream string, f proxylib.ParserFactory) {
	p.upstream, p.factory = upstream, f
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.handle(c)
			}()
		}
	}()
}

func (p *proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// connOutput writes what the Stream forwards to the sockets.
type connOutput struct {
	client, server net.Conn
	closed         chan struct{}
	once           sync.Once
}

func (o *connOutput) Forward(reply bool, data []byte) {
	dst := o.server
	if reply {
		dst = o.client
	}
	_, _ = dst.Write(data) // a write error shows up as a read error on the same socket
}

func (o *connOutput) End(reply bool) {
	dst := o.server
	if reply {
		dst = o.client
	}
	_ = dst.(*net.TCPConn).CloseWrite() // an error shows up on the same socket
}

func (o *connOutput) Close(string) {
	o.once.Do(func() {
		close(o.closed)
		o.client.Close()
		o.server.Close()
	})
}

func (p *proxy) handle(client net.Conn) {
	server, err := net.Dial("tcp", p.upstream)
	if err != nil {
		client.Close()
		return
	}
	p.track(client, true)
	p.track(server, true)
	defer p.track(client, false)
	defer p.track(server, false)
	p.mu.Lock()
	p.nextID++
	id := p.nextID
	p.mu.Unlock()
	out := &connOutput{client: client, server: server, closed: make(chan struct{})}
	var mu sync.Mutex // the Stream is driven by one direction at a time, as Envoy's worker thread does
	s := proxylib.NewStream(p.factory, out, &proxylib.ConnInfo{
		Ingress: true, SrcIdentity: p.identity, DstIdentity: brokerIdentity,
		SrcAddr: client.RemoteAddr().String(), DstAddr: p.upstream, DstPort: uint16(server.RemoteAddr().(*net.TCPAddr).Port),
		ConnectionID: id,
	})
	pump := func(from net.Conn, reply bool) {
		buf := make([]byte, 64<<10)
		for {
			n, err := from.Read(buf)
			mu.Lock()
			if n > 0 {
				s.OnData(reply, false, [][]byte{buf[:n]})
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					s.OnData(reply, true, nil)
				}
				mu.Unlock()
				out.Close("eof")
				return
			}
			mu.Unlock()
		}
	}
	done := make(chan struct{})
	go func() {
		pump(server, true)
		close(done)
	}()
	pump(client, false)
	<-done
}
