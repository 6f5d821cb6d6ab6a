package main

import (
	"fmt"
	"io"
)

func runBPF(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "ward bpf: not implemented yet")
	return 1
}
