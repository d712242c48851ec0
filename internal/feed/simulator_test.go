package feed_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tickstream/tickstream/internal/broker"
	"github.com/tickstream/tickstream/internal/feed"
	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/quote"
)

func setup(t *testing.T, mode feed.Mode, osc float64, in []quote.Instrument) (*hub.Hub, *feed.Simulator, *int) {
	t.Helper()
	s, err := quote.NewStore(in, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	h := hub.New(s)
	moved := new(int)
	sim := feed.NewSimulator(feed.SimulatorConfig{Interval: time.Second, Oscillation: osc, Mode: mode, Seed: 42},
		broker.NewMemory(h), slog.New(slog.NewTextHandler(io.Discard, nil)), func(n int) { *moved = n })
	return h, sim, moved
}

func TestTickMovesOnlyActiveSymbols(t *testing.T) {
	tests := []struct {
		mode          feed.Mode
		wantAllActive bool
	}{
		{feed.ModeAll, true},
		{feed.ModeSubset, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			h, sim, moved := setup(t, tt.mode, 0.01, quote.Builtin())
			sim.Tick()
			if *moved != 0 {
				t.Errorf("with no subscribers: got %d moved, want 0", *moved)
			}
			es := h.Store().Entries()
			h.NewSubscriber(func() {}).Subscribe(es[:10])
			sawPartial := false
			for i := 0; i < 50; i++ {
				time.Sleep(time.Millisecond) // a new millisecond, so every move is a change
				sim.Tick()
				if *moved < 1 || *moved > 10 {
					t.Fatalf("tick %d: %d moved, want 1..10", i, *moved)
				}
				if tt.wantAllActive && *moved != 10 {
					t.Fatalf("tick %d: %d moved, want all 10", i, *moved)
				}
				sawPartial = sawPartial || *moved < 10
			}
			if !tt.wantAllActive && !sawPartial {
				t.Error("subset mode moved every symbol on every tick")
			}
			for _, e := range es[10:] {
				if v := e.Latest().Version; v != 1 {
					t.Errorf("%s without subscribers moved to version %d", e.Symbol, v)
				}
			}
			for _, e := range es[:10] {
				q := e.Latest()
				if lo, hi := quote.Round2(e.BasePrice*0.99), quote.Round2(e.BasePrice*1.01); q.CurrentPrice < lo || q.CurrentPrice > hi {
					t.Errorf("%s at %v, outside [%v, %v]", e.Symbol, q.CurrentPrice, lo, hi)
				}
			}
		})
	}
}

func TestPriceNeverBelowOne(t *testing.T) {
	h, sim, _ := setup(t, feed.ModeAll, 0.9, []quote.Instrument{{Symbol: "PENNY", Name: "Penny", Type: quote.TypeStock, BasePrice: 1.05}})
	e := h.Store().Entries()[0]
	h.NewSubscriber(func() {}).Subscribe([]*quote.Entry{e})
	for i := 0; i < 200; i++ {
		time.Sleep(100 * time.Microsecond)
		sim.Tick()
		if p := e.Latest().CurrentPrice; p < 1 {
			t.Fatalf("price %v below 1.00", p)
		}
	}
}
