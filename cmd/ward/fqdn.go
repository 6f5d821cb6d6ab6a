package main

import (
	"fmt"
	"io"
)

func runFQDN(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "ward fqdn: not implemented yet")
	return 1
}
