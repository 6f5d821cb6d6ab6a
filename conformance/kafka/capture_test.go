package kafka

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/wardproxy/ward/proxylib"
)

// captureFactory wraps a parser factory and, for each API key and version
// a client sends, saves the first request frame it sees to dir as
// <client>-<key>-v<version>.bin (size prefix included). With
// WARD_KAFKA_CAPTURE=dir, TestEmpire refreshes the real-client requests
// filters/kafka decodes in its unit tests (testdata/clients).
type captureFactory struct {
	inner proxylib.ParserFactory
	dir   string
	name  func(identity uint32) string
	mu    sync.Mutex
	seen  map[string]bool
}

func (f *captureFactory) Create(c proxylib.Connection) proxylib.Parser {
	p := f.inner.Create(c)
	if p == nil {
		return nil
	}
	return &captureParser{Parser: p, f: f, client: f.name(c.Info().SrcIdentity)}
}

type captureParser struct {
	proxylib.Parser
	f      *captureFactory
	client string
}

func (p *captureParser) OnData(reply, end bool, data [][]byte) (proxylib.Op, int) {
	op, n := p.Parser.OnData(reply, end, data)
	if reply || (op != proxylib.Pass && op != proxylib.Drop) {
		return op, n
	}
	var b []byte
	for _, d := range data {
		b = append(b, d...)
	}
	if len(b) < 8 || n > len(b) || int(binary.BigEndian.Uint32(b))+4 != n {
		return op, n
	}
	name := fmt.Sprintf("%s-%d-v%d.bin", p.client, binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]))
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	if !p.f.seen[name] {
		p.f.seen[name] = true
		_ = os.WriteFile(filepath.Join(p.f.dir, name), b[:n], 0o644) // best effort: a capture aid, not a test
	}
	return op, n
}
