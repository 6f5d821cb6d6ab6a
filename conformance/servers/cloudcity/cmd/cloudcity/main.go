// Command cloudcity serves the Cloud City door manager (cloudcity.DoorManager,
// with server reflection) for manual tests: cloudcity -listen 127.0.0.1:50051.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/wardproxy/ward/conformance/servers/cloudcity"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:50051", "address to serve gRPC on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloudcity:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "cloudcity: serving on", lis.Addr())
	if err := cloudcity.Serve(ctx, lis); err != nil {
		fmt.Fprintln(os.Stderr, "cloudcity:", err)
		os.Exit(1)
	}
}
