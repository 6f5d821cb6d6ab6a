package main

import (
	"fmt"
	"io"
)

func runStatus(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "ward status: not implemented yet")
	return 1
}
