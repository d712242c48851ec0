// Package feed produces price updates. Simulator is the built-in source: the
// original service's random walk around each instrument's base price. Where
// its prices go is a Market's business: the local hub (one instance) or
// Redis (several instances, one publisher), see internal/broker.
package feed

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/tickstream/tickstream/internal/quote"
)

// Tick is one new price of one instrument, computed at At.
type Tick struct {
	Entry *quote.Entry
	Price float64
	At    time.Time
}

// Market is the seam between the feed and the hub. It is owned here, the
// consumer, and implemented by broker.Memory (apply to the local hub) and
// broker.Redis (publish through Redis while this instance holds the feed
// lease, apply locally while Redis is away).
type Market interface {
	// Movable appends to dst the entries the feed should move now: those
	// with subscribers somewhere, or none when this instance must not
	// publish.
	Movable(dst []*quote.Entry) []*quote.Entry
	// Publish delivers one tick's prices as one batch and returns how many
	// symbols it moved or published.
	Publish(ticks []Tick) int
}

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

// Simulator moves the prices of the symbols its Market says are movable.
type Simulator struct {
	cfg    SimulatorConfig
	market Market
	log    *slog.Logger
	rng    *rand.Rand
	now    func() time.Time
	onTick func(updated int)

	active []*quote.Entry // reused each tick
	ticks  []Tick         // reused each tick
}

// NewSimulator returns a simulator publishing to m. onTick, when not nil,
// is told how many symbols moved on each tick (for metrics).
func NewSimulator(cfg SimulatorConfig, m Market, log *slog.Logger, onTick func(updated int)) *Simulator {
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Simulator{
		cfg: cfg, market: m, log: log, onTick: onTick,
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
	s.active = s.market.Movable(s.active[:0])
	if len(s.active) == 0 {
		return
	}
	now := s.now()
	s.ticks = s.ticks[:0]
	for _, e := range s.pick(s.active) {
		u := (s.rng.Float64()*2 - 1) * s.cfg.Oscillation
		s.ticks = append(s.ticks, Tick{Entry: e, Price: max(e.BasePrice*(1+u), 1.00), At: now})
	}
	moved := s.market.Publish(s.ticks)
	clear(s.ticks) // drop the entry pointers until the next tick
	if s.onTick != nil {
		s.onTick(moved)
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
