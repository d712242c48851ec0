package main

import (
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	var b backoff
	stop := make(chan struct{})
	close(stop) // wait returns at once; only the steps are checked
	var steps []time.Duration
	for range 8 {
		b.wait(stop)
		steps = append(steps, b.step)
	}
	want := []time.Duration{200, 400, 800, 1600, 2000, 2000, 2000, 2000}
	for i := range want {
		if steps[i] != want[i]*time.Millisecond {
			t.Fatalf("steps: got %v, want %v ms", steps, want)
		}
	}
	// Each wait lies in [step/2, step]: 100ms..2s overall.
	if lo, hi := steps[0]/2, steps[len(steps)-1]; lo != backoffMin || hi != backoffMax {
		t.Errorf("bounds: got %v..%v, want %v..%v", lo, hi, backoffMin, backoffMax)
	}
}
