package hub_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/internal/quote"
)

// TestBeforeSubscribe: the hook sees only the entries newly subscribed,
// already in their topics (so a broker's sweep cannot drop them), and a
// quote it sets is the one the snapshot carries.
func TestBeforeSubscribe(t *testing.T) {
	h, es := newHub(t, 3)
	var calls [][]string
	h.BeforeSubscribe(func(got []*quote.Entry) {
		var syms []string
		for _, e := range got {
			if !h.Subscribed(e) {
				t.Errorf("%s: not in its topic when the hook ran", e.Symbol)
			}
			syms = append(syms, e.Symbol)
			e.Set(123.45, t0.Add(time.Minute)) // the shared quote arrives
		}
		calls = append(calls, syms)
	})
	s := h.NewSubscriber(func() {})
	s.Subscribe(es[:2])
	s.Subscribe(es[:3]) // only the third is new
	s.Subscribe(es[:1]) // nothing new: no call

	want := []string{es[0].Symbol + "," + es[1].Symbol, es[2].Symbol}
	if len(calls) != len(want) {
		t.Fatalf("hook calls: got %v, want %v", calls, want)
	}
	for i, c := range calls {
		if got := strings.Join(c, ","); got != want[i] {
			t.Errorf("call %d: got %s, want %s", i, got, want[i])
		}
	}
	b, _ := s.AppendChanges(nil)
	if n := strings.Count(string(b), `"current_price":123.45`); n != 3 {
		t.Errorf("snapshot holds the hook's quote %d times, want 3: %s", n, b)
	}
}
