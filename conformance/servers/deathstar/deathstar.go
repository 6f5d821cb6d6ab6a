// Package deathstar is the Death Star landing service of the seed's Star
// Wars demo (Cilium's "Getting Started with the Star Wars Demo"), a real
// net/http server for ward's conformance tests: tiefighter may
// POST /v1/request-landing ("Ship landed"); PUT /v1/exhaust-port is what
// the L7 policy must stop (the server "explodes").
//
// It also offers NewEcho, a catch-all handler that answers every request
// with what it received (method, path, host, headers) as JSON, so tests can
// observe what reached the upstream (headerMatches REPLACE, Elasticsearch
// style paths).
package deathstar

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

// Texts the handlers answer with.
const (
	Landed   = "Ship landed\n"
	Exploded = `Panic: deathstar exploded

goroutine 1 [running]:
main.HandleGarbage(0x2080c3f50, 0x2, 0x4, 0x425c0, 0x5, 0xa)
        /code/src/github.com/empire/deathstar/
        temp/main.go:9 +0x64
main.main()
        /code/src/github.com/empire/deathstar/
        temp/main.go:5 +0x85
`
)

// API lists the endpoints GET /v1 advertises.
var API = []string{
	"GET   /v1",
	"GET   /v1/healthz",
	"POST  /v1/request-landing",
	"PUT   /v1/cargobay",
	"GET   /v1/hyper-matter-reactor/status",
	"PUT   /v1/exhaust-port",
}

type info struct {
	Name             string   `json:"name"`
	Hostname         string   `json:"hostname"`
	Model            string   `json:"model"`
	Manufacturer     string   `json:"manufacturer"`
	CostInCredits    string   `json:"cost_in_credits"`
	Length           string   `json:"length"`
	Crew             string   `json:"crew"`
	Passengers       string   `json:"passengers"`
	CargoCapacity    string   `json:"cargo_capacity"`
	HyperdriveRating string   `json:"hyperdrive_rating"`
	StarshipClass    string   `json:"starship_class"`
	API              []string `json:"api"`
}

// New returns the Death Star's handler.
func New() http.Handler {
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	about := func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, info{
			Name: "Death Star", Hostname: host, Model: "DS-1 Orbital Battle Station",
			Manufacturer:  "Imperial Department of Military Research, Sienar Fleet Systems",
			CostInCredits: "1000000000000", Length: "120000", Crew: "342953", Passengers: "843342",
			CargoCapacity: "1000000000000", HyperdriveRating: "4.0", StarshipClass: "Deep Space Mobile Battlestation",
			API: API,
		})
	}
	mux.HandleFunc("GET /{$}", about)
	mux.HandleFunc("GET /v1", about)
	mux.HandleFunc("GET /v1/{$}", about)
	mux.HandleFunc("GET /v1/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /v1/request-landing", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, Landed)
	})
	mux.HandleFunc("PUT /v1/cargobay", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "Cargo loaded\n")
	})
	mux.HandleFunc("GET /v1/hyper-matter-reactor/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]string{"status": "stable"})
	})
	mux.HandleFunc("PUT /v1/exhaust-port", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusInternalServerError, Exploded)
	})
	return mux
}

// Echo is what NewEcho answers: the request as the upstream saw it.
type Echo struct {
	Method  string              `json:"method"`
	Path    string              `json:"path"` // with the query
	Host    string              `json:"host"`
	Proto   string              `json:"proto"`
	Headers map[string][]string `json:"headers"` // lower-case names
}

// NewEcho returns a handler answering every request with 200 and its Echo.
func NewEcho() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e := Echo{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Proto: r.Proto, Headers: map[string][]string{}}
		names := make([]string, 0, len(r.Header))
		for k := range r.Header {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			e.Headers[strings.ToLower(k)] = r.Header[k]
		}
		writeJSON(w, e)
	})
}

func text(w http.ResponseWriter, status int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(s)) // the client went away: nothing to do
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "\t")
	_ = enc.Encode(v) // the client went away: nothing to do
}

// Serve serves h on lis over HTTP/1.1 and cleartext HTTP/2 (h2c, prior
// knowledge) until ctx is done, then shuts down. It returns nil after a
// stop through ctx.
func Serve(ctx context.Context, lis net.Listener, h http.Handler) error {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
		return err
	}
}
