// Package feed produces price updates. Simulator is the built-in source: the
// original service's random walk around each instrument's base price.
package feed

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/quote"
)

// Mode selects which active symbols move on a tick.
type Mode string

const (
	// ModeSubset moves a random non-empty subset of the active symbols each
	// tick, as the original service did.
	ModeSubset Mode = "subset"
	// ModeAll moves every active symbol each tick, for benchmarks.
	ModeAll Mode = "all"
)

// SimulatorConfig holds the simulator's settings.
type SimulatorConfig struct {
	Interval    time.Duration // PRICE_UPDATE_INTERVAL
	Oscillation float64       // PRICE_OSCILLATION_PERCENT as a fraction: 0.01 is ±1%
	Mode        Mode          // SIM_UPDATE
	Seed        uint64        // 0 picks a random seed
}

// Simulator moves the prices of the symbols that have subscribers.
type Simulator struct {
	cfg    SimulatorConfig
	hub    *hub.Hub
	log    *slog.Logger
	rng    *rand.Rand
	now    func() time.Time
	onTick func(updated int)

	active  []*quote.Entry // reused each tick
	updated []*quote.Entry // reused each tick
}

// NewSimulator returns a simulator publishing to h. onTick, when not nil, is
// told how many symbols moved on each tick (for metrics).
func NewSimulator(cfg SimulatorConfig, h *hub.Hub, log *slog.Logger, onTick func(updated int)) *Simulator {
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Simulator{
		cfg: cfg, hub: h, log: log, onTick: onTick,
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		now: time.Now,
	}
}

// Run ticks until ctx is done.
func (s *Simulator) Run(ctx context.Context) error {
	s.log.Info("price simulator started", "interval", s.cfg.Interval, "mode", s.cfg.Mode)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.Tick()
		}
	}
}

// Tick moves prices once and publishes the moved symbols as one batch.
func (s *Simulator) Tick() {
	s.active = s.hub.Active(s.active[:0])
	if len(s.active) == 0 {
		return
	}
	now := s.now()
	s.updated = s.updated[:0]
	for _, e := range s.pick(s.active) {
		u := (s.rng.Float64()*2 - 1) * s.cfg.Oscillation
		price := max(e.BasePrice*(1+u), 1.00)
		if _, changed := e.Set(price, now); changed {
			s.updated = append(s.updated, e)
		}
	}
	if len(s.updated) > 0 {
		s.hub.Publish(s.updated)
	}
	if s.onTick != nil {
		s.onTick(len(s.updated))
	}
}

// pick chooses the entries that move on this tick, in place.
func (s *Simulator) pick(active []*quote.Entry) []*quote.Entry {
	if s.cfg.Mode == ModeAll {
		return active
	}
	chosen := active[:0]
	for _, e := range active {
		if s.rng.IntN(2) == 0 {
			chosen = append(chosen, e)
		}
	}
	if len(chosen) == 0 {
		chosen = append(chosen, active[s.rng.IntN(len(active))])
	}
	return chosen
}
