// Command deathstar serves the Death Star landing service (HTTP/1.1 and
// h2c) for manual tests: deathstar -listen 127.0.0.1:8080 [-echo].
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/wardproxy/ward/conformance/servers/deathstar"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve HTTP on")
	echo := flag.Bool("echo", false, "answer every request with what was received (JSON) instead")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "deathstar:", err)
		os.Exit(1)
	}
	var h http.Handler = deathstar.New()
	if *echo {
		h = deathstar.NewEcho()
	}
	fmt.Fprintln(os.Stderr, "deathstar: serving on", lis.Addr())
	if err := deathstar.Serve(ctx, lis, h); err != nil {
		fmt.Fprintln(os.Stderr, "deathstar:", err)
		os.Exit(1)
	}
}
