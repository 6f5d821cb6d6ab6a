package flow

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fill sets every field reachable from v to a non-zero value derived from
// s, so a field AppendJSON forgets shows up as a difference.
func fill(v reflect.Value, s string) {
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), s)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 12, 2, 19, 30, 1, 123456789, time.UTC)))
			return
		}
		for i := range v.NumField() {
			fill(v.Field(i), s+v.Type().Field(i).Name)
		}
	case reflect.String:
		v.SetString(s)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		fill(v.Index(0), s+"0")
		fill(v.Index(1), s+"1")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(len(s)%100 + 1))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(len(s)%100 + 1))
	default:
		panic("fill: unhandled kind " + v.Kind().String())
	}
}

// checkSame asserts that AppendJSON reads back like encoding/json's form.
func checkSame(t *testing.T, r *Record) {
	t.Helper()
	want, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	got := r.AppendJSON(nil)
	if !json.Valid(got) {
		t.Fatalf("AppendJSON is not valid JSON: %s", got)
	}
	var a, b Record
	if err := json.Unmarshal(got, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want, &b); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(b, a); d != "" {
		t.Errorf("AppendJSON differs from encoding/json (-want +got):\n%s\n%s\n%s", d, want, got)
	}
	if string(got) != string(want) {
		t.Errorf("bytes differ:\n%s\n%s", want, got)
	}
}

func TestAppendJSON(t *testing.T) {
	full := &Record{}
	fill(reflect.ValueOf(full).Elem(), "x")
	checkSame(t, full)
	checkSame(t, &Record{}) // every omitempty field left out
	checkSame(t, &Record{Time: time.Now(), Verdict: Denied, HTTP: &HTTP{Rule: -1}, Kafka: &Kafka{}, DNS: &DNS{}, TLS: &TLS{}, L4: &L4{}})
	checkSame(t, &Record{Reason: "quote \" backslash \\ <script>&amp; \n\r\t\x00\x1f \xff\xfe invalid, \u2028\u2029 é 日本"})
	var b Batch
	b.Records = []*Record{full, {Verdict: Allowed}}
	b.Dropped = 7
	var back Batch
	if err := json.Unmarshal(b.AppendJSON(nil), &back); err != nil || len(back.Records) != 2 || back.Dropped != 7 {
		t.Errorf("batch round trip: %+v %v", back, err)
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("GET", "/v1/exhaust-port?x=<y>", "\xff")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		checkSame(t, &Record{Reason: a, Source: Endpoint{Labels: []string{b, c}, IP: c}, HTTP: &HTTP{Method: a, Path: b, Host: c},
			DNS: &DNS{Query: c, IPs: []string{a}}, Kafka: &Kafka{Topics: []string{b}, ClientID: a}, TLS: &TLS{SNI: b}})
	})
}

func BenchmarkRecordJSON(b *testing.B) {
	r := &Record{Time: time.Now(), Direction: Ingress, Verdict: Denied, Reason: "no http rule matched",
		Source: Endpoint{Identity: 1000, IP: "10.0.0.2", Port: 43210}, Destination: Endpoint{Labels: []string{"endpoint:deathstar"}, IP: "10.0.0.1", Port: 80},
		Proto: "http", HTTP: &HTTP{Method: "PUT", Host: "deathstar", Path: "/v1/exhaust-port", Protocol: "HTTP/1.1", Status: 403, Rule: -1}}
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			json.Marshal(r) //nolint:errcheck // benchmark
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = r.AppendJSON(buf[:0])
		}
	})
}
