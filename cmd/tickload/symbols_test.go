package main

import (
	"slices"
	"testing"
)

func TestAssign(t *testing.T) {
	pool := []string{"A", "B", "C", "D", "E"}
	tests := []struct {
		i, k int
		want []string
	}{
		{0, 2, []string{"A", "B"}},
		{1, 2, []string{"C", "D"}},
		{2, 2, []string{"E", "A"}}, // wraps
		{3, 2, []string{"B", "C"}},
		{5, 2, []string{"A", "B"}}, // (5*2) mod 5 = 0
		{7, 5, []string{"A", "B", "C", "D", "E"}},
		{4, 1, []string{"E"}},
	}
	for _, tt := range tests {
		if got := assign(tt.i, tt.k, pool); !slices.Equal(got, tt.want) {
			t.Errorf("assign(%d, %d): got %v, want %v", tt.i, tt.k, got, tt.want)
		}
	}
}

func TestSlowSlots(t *testing.T) {
	tests := []struct {
		n, conns int
		want     []int
	}{
		{0, 10, nil},
		{2, 10, []int{0, 5}},
		{5, 50, []int{0, 10, 20, 30, 40}},
		{3, 3, []int{0, 1, 2}},
	}
	for _, tt := range tests {
		got := slowSlots(tt.n, tt.conns)
		var ids []int
		for id := range got {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, tt.want) {
			t.Errorf("slowSlots(%d, %d): got %v, want %v", tt.n, tt.conns, ids, tt.want)
		}
	}
}

func TestBatches(t *testing.T) {
	syms := []string{"AAAA", "BBBB", "CCCC", "DDDD", "EEEE"}
	tests := []struct {
		n, bytes int
		want     [][]string
	}{
		{10, 1000, [][]string{syms}},
		{2, 1000, [][]string{syms[0:2], syms[2:4], syms[4:5]}},
		{10, 12, [][]string{syms[0:2], syms[2:4], syms[4:5]}}, // "AAAA,BBBB," is 10 bytes
		{10, 1, [][]string{syms[0:1], syms[1:2], syms[2:3], syms[3:4], syms[4:5]}},
	}
	for _, tt := range tests {
		got := batches(syms, tt.n, tt.bytes)
		if !slices.EqualFunc(got, tt.want, slices.Equal) {
			t.Errorf("batches(n=%d, bytes=%d): got %v, want %v", tt.n, tt.bytes, got, tt.want)
		}
	}
}
