package kafka

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// realClientFrames are request frames (size prefix included) that kcat,
// the Kafka 4.3.1 console tools and franz-go sent to a Kafka 4.3.1 broker
// in conformance/kafka's TestEmpire (refresh: WARD_KAFKA_CAPTURE=<this
// dir>). File names are <client>-<api key>-v<version>.bin.
func realClientFrames(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "clients", "*.bin"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captured client requests in testdata/clients: %v", err)
	}
	m := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = b
	}
	return m
}

func TestRealClientRequests(t *testing.T) {
	known := map[string]bool{"empire-announce": true, "deathstar-plans": true, "empire-new": true}
	for name, b := range realClientFrames(t) {
		var dc decoder
		d, err := dc.decodeRequest(b[4:])
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !strings.Contains(name, "-"+strconv.Itoa(int(d.APIKey))+"-v"+strconv.Itoa(int(d.APIVersion))+".") {
			t.Errorf("%s: decoded key %d version %d", name, d.APIKey, d.APIVersion)
		}
		for _, tp := range d.Topics {
			if !known[tp] {
				t.Errorf("%s: topic %q is not one the clients used", name, tp)
			}
		}
		switch d.APIKey {
		case keyProduce, keyFetch, keyListOffsets, keyOffsetFetch, keyOffsetCommit, 19, 20:
			if len(d.Topics) == 0 && d.unresolved == 0 && !(d.APIKey == keyFetch && len(d.entries) == 0) {
				t.Errorf("%s: %s request names no topic", name, APIKeyName(d.APIKey))
			}
		}
		// Every request can be denied like a broker would.
		if _, err := denyResponse(d, nil); err != nil && !d.opaque {
			t.Errorf("%s: deny response: %v", name, err)
		}
	}
}

// BenchmarkDecodeRealProduce decodes the Produce requests the console
// producer (v13, topics by ID) and kcat (v7, by name) sent.
func BenchmarkDecodeRealProduce(b *testing.B) {
	frames := realClientFrames(b)
	for _, name := range []string{"hq-0-v13.bin", "hq-0-v7.bin"} {
		f, ok := frames[name]
		if !ok {
			b.Fatalf("missing testdata/clients/%s", name)
		}
		b.Run(name, func(b *testing.B) {
			dc := decoder{ids: func(TopicID) (string, bool) { return "empire-announce", true }}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := dc.decodeRequest(f[4:]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
