package ws

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/klauspost/compress/flate"

	"github.com/tickstream/tickstream/internal/quote"
)

// clientInflater decompresses a server's messages the way a client with
// context takeover does: one inflate stream across messages.
type clientInflater struct {
	src *bytes.Buffer
	r   io.ReadCloser
}

func newClientInflater() *clientInflater {
	src := new(bytes.Buffer)
	return &clientInflater{src: src, r: flate.NewReader(src)}
}

func (c *clientInflater) message(t *testing.T, compressed []byte, n int) []byte {
	t.Helper()
	c.src.Write(compressed)
	c.src.Write(tail)
	out := make([]byte, n)
	if _, err := io.ReadFull(c.r, out); err != nil {
		t.Fatalf("inflate: %v", err)
	}
	return out
}

// TestDeflateTakeover: messages decompress in sequence on one client
// stream, and with context takeover a message like the previous one
// compresses far smaller than alone.
func TestDeflateTakeover(t *testing.T) {
	store, err := quote.NewStore(quote.Builtin(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e, _ := store.Lookup("AAPL")
	msgs := [][]byte{}
	for i := range 5 {
		q, _ := e.Set(176+float64(i)/7, time.Now().Add(time.Duration(i+1)*time.Millisecond))
		msgs = append(msgs, append(append([]byte(`{"type":"quotes_patch","seq":1,"operations":[`), q.Replace...), "]}"...))
	}
	for _, takeover := range []bool{true, false} {
		d := &deflater{takeover: takeover}
		in := newClientInflater()
		var sizes []int
		for _, m := range msgs {
			z := d.compress(nil, m)
			sizes = append(sizes, len(z))
			if got := in.message(t, z, len(m)); !bytes.Equal(got, m) {
				t.Fatalf("takeover=%v: got %s, want %s", takeover, got, m)
			}
		}
		if takeover && sizes[4]*3 > sizes[0] {
			t.Errorf("with takeover a repeat is %d bytes against %d alone, want under a third", sizes[4], sizes[0])
		}
		if !takeover && len(d.history) != 0 {
			t.Errorf("without takeover the history holds %d bytes", len(d.history))
		}
	}
}

func TestDeflateHistoryBounded(t *testing.T) {
	d := &deflater{takeover: true}
	d.remember(bytes.Repeat([]byte("a"), 1500))
	d.remember(bytes.Repeat([]byte("b"), 1000))
	if len(d.history) != historySize || !bytes.HasSuffix(d.history, bytes.Repeat([]byte("b"), 1000)) || d.history[0] != 'a' {
		t.Errorf("history: %d bytes, want %d ending with the newest", len(d.history), historySize)
	}
	d.remember(bytes.Repeat([]byte("c"), 5000))
	if len(d.history) != historySize || d.history[0] != 'c' {
		t.Errorf("history after a big message: %d bytes starting %q", len(d.history), d.history[0])
	}
}

func TestInflateLimit(t *testing.T) {
	d := &deflater{}
	bomb := d.compress(nil, bytes.Repeat([]byte("a"), 1<<20))
	if _, err := inflate(bomb, MaxMessageSize); !errors.Is(err, errInflatedTooBig) {
		t.Errorf("1 MiB bomb of %d bytes: got %v, want errInflatedTooBig", len(bomb), err)
	}
	ok := d.compress(nil, []byte(`{"type":"ping"}`))
	if got, err := inflate(ok, MaxMessageSize); err != nil || string(got) != `{"type":"ping"}` {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := inflate([]byte{0xff, 0xff, 0xff}, MaxMessageSize); err == nil {
		t.Error("garbage inflated without error")
	}
}

func TestReadCompressedMessage(t *testing.T) {
	z := (&deflater{}).compress(nil, []byte(`{"type":"ping"}`))
	frame := clientFrame(t, true, ws.OpText, z, func(h *ws.Header) { h.Rsv = 4 })
	for _, negotiated := range []bool{true, false} {
		fr := frameReader{r: bytes.NewReader(frame), compress: negotiated, onPing: func([]byte) {}, onPong: func() {}, onFrame: func() {}}
		got, err := fr.readMessage()
		var ce *closeError
		switch {
		case negotiated && (err != nil || string(got) != `{"type":"ping"}`):
			t.Errorf("negotiated: got %q, %v", got, err)
		case !negotiated && (!errors.As(err, &ce) || ce.code != CloseProtocolError):
			t.Errorf("not negotiated: got %v, want close 1002", err)
		}
	}
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		offer    string
		want     string // "" means declined
		takeover bool
	}{
		{"permessage-deflate", "permessage-deflate;client_no_context_takeover", true},
		{"permessage-deflate; client_max_window_bits", "permessage-deflate;client_no_context_takeover", true},
		{"permessage-deflate; server_no_context_takeover", "permessage-deflate;server_no_context_takeover;client_no_context_takeover", false},
		{"permessage-deflate; server_max_window_bits=10", "", false},
		{"permessage-deflate; server_max_window_bits=10, permessage-deflate", "permessage-deflate;client_no_context_takeover", true},
		{"permessage-deflate; nonsense=1", "", false},
		{"x-webkit-deflate-frame", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.offer, func(t *testing.T) {
			var n deflateNegotiator
			opts, ok := httphead.ParseOptions([]byte(tt.offer), nil)
			if !ok {
				t.Fatalf("bad offer %q", tt.offer)
			}
			var accepted []httphead.Option
			for _, o := range opts {
				acc, err := n.negotiate(o)
				if err != nil {
					t.Fatal(err)
				}
				if acc.Size() > 0 {
					accepted = append(accepted, acc)
				}
			}
			var got strings.Builder
			httphead.WriteOptions(&got, accepted)
			if g := got.String(); g != tt.want {
				t.Errorf("got %q, want %q", g, tt.want)
			}
			if d := n.deflater(); (d != nil) != (tt.want != "") || d != nil && d.takeover != tt.takeover {
				t.Errorf("deflater: got %+v, want takeover=%v", d, tt.takeover)
			}
		})
	}
}

// BenchmarkCompress compresses a connection's quotes_patch of 5 symbol
// updates with context takeover: what permessage-deflate costs per message
// and how many bytes a symbol update takes on the wire.
func BenchmarkCompress(b *testing.B) {
	store, _ := quote.NewStore(quote.Builtin(), time.Now())
	es := store.Entries()[:5]
	t0 := time.Now()
	// 64 successive messages, built before timing.
	msgs := make([][]byte, 64)
	for i := range msgs {
		msg := []byte(`{"type":"quotes_patch","seq":12345,"operations":[`)
		for k, e := range es {
			q, _ := e.Set(e.BasePrice*(1+float64((i*7+k)%100-50)/5000), t0.Add(time.Duration(i+1)*time.Millisecond))
			if k > 0 {
				msg = append(msg, ',')
			}
			msg = append(msg, q.Patch...)
		}
		msgs[i] = append(msg, "]}"...)
	}
	d := &deflater{takeover: true}
	dst := make([]byte, 0, 4096)
	var in, out int
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := msgs[i%len(msgs)]
		in += len(m)
		out += len(d.compress(dst[:0], m))
	}
	b.ReportMetric(float64(out)/float64(in), "ratio")
	b.ReportMetric(float64(out)/float64(b.N*len(es)), "bytes/update")
	b.ReportMetric(float64(in)/float64(b.N*len(es)), "raw_bytes/update")
}
