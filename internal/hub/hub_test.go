package hub_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"

	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/quote"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func newHub(t testing.TB, n int) (*hub.Hub, []*quote.Entry) {
	t.Helper()
	s, err := quote.NewStore(quote.Synthetic(n), t0)
	if err != nil {
		t.Fatal(err)
	}
	return hub.New(s), s.Entries()
}

// client is a subscriber whose document is kept with an RFC 6902 library.
type client struct {
	t     testing.TB
	sub   *hub.Subscriber
	woken atomic.Int32
	doc   []byte
}

func newClient(t testing.TB, h *hub.Hub) *client {
	c := &client{t: t, doc: []byte(`{"quotes":{}}`)}
	c.sub = h.NewSubscriber(func() { c.woken.Add(1) })
	return c
}

// read applies whatever is pending and returns the number of operations.
func (c *client) read() hub.Changes {
	c.t.Helper()
	b, ch := c.sub.AppendChanges(nil)
	if ch.Ops == 0 {
		if len(b) != 0 {
			c.t.Fatalf("no ops but %q appended", b)
		}
		return ch
	}
	p, err := jsonpatch.DecodePatch([]byte("[" + string(b) + "]"))
	if err != nil {
		c.t.Fatalf("decode %s: %v", b, err)
	}
	if c.doc, err = p.Apply(c.doc); err != nil {
		c.t.Fatalf("apply %s: %v", b, err)
	}
	return ch
}

// want checks the document holds exactly the latest quotes of entries.
func (c *client) want(entries ...*quote.Entry) {
	c.t.Helper()
	w := map[string]json.RawMessage{}
	for _, e := range entries {
		w[e.Symbol] = e.Latest().JSON
	}
	wb, _ := json.Marshal(map[string]any{"quotes": w})
	if !jsonpatch.Equal(c.doc, wb) {
		c.t.Errorf("document:\n got %s\nwant %s", c.doc, wb)
	}
}

func move(h *hub.Hub, at time.Duration, entries ...*quote.Entry) {
	for i, e := range entries {
		e.Set(e.BasePrice+float64(i)+at.Seconds(), t0.Add(at))
	}
	h.Publish(entries)
}

func TestSubscribeUpdateUnsubscribe(t *testing.T) {
	h, es := newHub(t, 3)
	c := newClient(t, h)
	c.sub.Subscribe(es[:2])
	if got := c.woken.Load(); got != 1 {
		t.Errorf("wakes after subscribe: got %d, want 1", got)
	}
	if ch := c.read(); ch.Ops != 2 {
		t.Errorf("snapshot ops: got %d, want 2", ch.Ops)
	}
	c.want(es[0], es[1])

	move(h, time.Second, es...)
	if ch := c.read(); ch.Ops != 2 || ch.Conflated != 0 {
		t.Errorf("update: got %+v, want 2 ops, 0 conflated", ch)
	}
	c.want(es[0], es[1])

	if got := h.Active(nil); len(got) != 2 {
		t.Errorf("active symbols: got %d, want 2", len(got))
	}
	c.sub.Unsubscribe(es[:1])
	c.read()
	c.want(es[1])
	if got := h.Subscriptions(); got != 1 {
		t.Errorf("subscriptions: got %d, want 1", got)
	}
	c.sub.Close()
	if got := len(h.Active(nil)); got != 0 {
		t.Errorf("active after close: got %d, want 0", got)
	}
	move(h, 2*time.Second, es...)
	if ch := c.read(); ch.Ops != 0 {
		t.Errorf("ops after close: got %d, want 0", ch.Ops)
	}
}

// TestConflation: a subscriber that does not read while many ticks pass gets
// one whole-quote replace per symbol and converges.
func TestConflation(t *testing.T) {
	h, es := newHub(t, 5)
	c := newClient(t, h)
	c.sub.Subscribe(es)
	c.read()
	for i := 1; i <= 100; i++ {
		move(h, time.Duration(i)*time.Second, es...)
	}
	ch := c.read()
	if ch.Ops != 5 {
		t.Errorf("ops: got %d, want 5", ch.Ops)
	}
	if ch.Conflated != 5*99 {
		t.Errorf("conflated: got %d, want %d", ch.Conflated, 5*99)
	}
	c.want(es...)
	if got := c.woken.Load(); got != 2 {
		t.Errorf("wakes: got %d, want 2 (subscribe, first unread tick)", got)
	}
}

func TestResubscribeBeforeRead(t *testing.T) {
	h, es := newHub(t, 2)
	c := newClient(t, h)
	c.sub.Subscribe(es)
	c.read()
	c.sub.Unsubscribe(es[:1])
	move(h, time.Second, es...)
	c.sub.Subscribe(es[:1])
	c.read()
	c.want(es...)
	if got := c.sub.Symbols(); fmt.Sprint(got) != "[SYN00001 SYN00002]" {
		t.Errorf("Symbols: got %v", got)
	}
}

// TestConcurrentConverges runs publishers, subscribers and readers at once
// (for the race detector) and checks every document converges.
func TestConcurrentConverges(t *testing.T) {
	h, es := newHub(t, 20)
	const clients = 20
	cs := make([]*client, clients)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
				move(h, time.Duration(i)*time.Millisecond, es...)
			}
		}
	}()
	for i := range cs {
		cs[i] = newClient(t, h)
		wg.Add(1)
		go func(c *client, i int) {
			defer wg.Done()
			for k := 0; k < 200; k++ {
				c.sub.Subscribe(es[(i+k)%20 : (i+k)%20+1])
				if k%3 == 0 {
					c.sub.Unsubscribe(es[(i+k+7)%20 : (i+k+7)%20+1])
				}
				c.read()
			}
		}(cs[i], i)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	for _, c := range cs {
		c.read()
		var want []*quote.Entry
		for _, sym := range c.sub.Symbols() {
			e, _ := h.Store().Lookup(sym)
			want = append(want, e)
		}
		c.want(want...)
	}
}

// BenchmarkFanout10k is one tick of 50 symbols to 10,000 subscribers of 5
// symbols each: the quotes are set (encoded once), the hub marks every
// subscriber, and every subscriber assembles its operations from the
// shared fragments, as the writers do.
func BenchmarkFanout10k(b *testing.B) {
	h, es := newHub(b, 50)
	subs := make([]*hub.Subscriber, 10_000)
	for i := range subs {
		subs[i] = h.NewSubscriber(func() {})
		subs[i].Subscribe(es[(i%10)*5 : (i%10)*5+5])
		subs[i].AppendChanges(nil)
	}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		move(h, time.Duration(i+1)*time.Millisecond, es...)
		for _, s := range subs {
			buf, _ = s.AppendChanges(buf[:0])
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(subs)*5), "ns/update")
}

// TestCloseRacesSubscribe: a connection torn down (by its writer or timer)
// while its reader subscribes leaves nothing behind in the hub.
func TestCloseRacesSubscribe(t *testing.T) {
	h, es := newHub(t, 50)
	for i := 0; i < 2000; i++ {
		s := h.NewSubscriber(func() {})
		started, done := make(chan struct{}), make(chan struct{})
		go func() {
			close(started)
			s.Subscribe(es)
			s.Unsubscribe(es[:3])
			close(done)
		}()
		<-started
		for range i % 50 {
			runtime.Gosched()
		}
		s.Close()
		<-done
	}
	if got := h.Subscriptions(); got != 0 {
		t.Errorf("subscriptions after every subscriber closed: got %d, want 0", got)
	}
	if got := len(h.Active(nil)); got != 0 {
		t.Errorf("active symbols: got %d, want 0", got)
	}
}
