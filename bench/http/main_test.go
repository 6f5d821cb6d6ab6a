package main

import (
	"slices"
	"testing"
)

func TestRatiosAndSpread(t *testing.T) {
	r := ratios([]float64{2, 3, 8}, []float64{1, 2, 4})
	if !slices.Equal(r, []float64{2, 1.5, 2}) {
		t.Fatalf("ratios = %v", r)
	}
	if got := spread(r, 2); got != "2.00 [1.50–2.00]" {
		t.Fatalf("spread = %q", got)
	}
	if got := spread(nil, 1); got != "—" {
		t.Fatalf("spread(nil) = %q", got)
	}
}
