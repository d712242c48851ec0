package ws

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws/wsflate"
	"github.com/klauspost/compress/flate"
)

// Compression (permessage-deflate, RFC 7692).
//
// Server to client: a message is compressed on its own connection, but
// with context takeover done cheaply: instead of keeping a deflate state
// per connection (hundreds of KB each), the connection keeps the last
// historySize bytes it sent compressed, and a pooled compressor is primed
// with them as a dictionary. The client's inflater holds those same bytes
// at the end of its window, so back-references into them are valid, and a
// quote update compresses against the previous version of the same quote.
// When the client asked for server_no_context_takeover, every message is
// compressed alone.
//
// Client to server: the server always answers client_no_context_takeover,
// so each client message inflates alone, with no per-connection state.

// historySize is how much of its past output a connection keeps as the
// compression dictionary. It covers the previous message of a connection
// with a handful of symbols, which is what the next one repeats.
const historySize = 2048

// deflateLevel trades CPU for size; level 1 is klauspost's fastest matcher.
const deflateLevel = flate.BestSpeed

// tail is what a sync flush ends with; RFC 7692 has the sender strip it.
var tail = []byte{0x00, 0x00, 0xff, 0xff}

var (
	deflaters = sync.Pool{New: func() any {
		w, _ := flate.NewWriter(nil, deflateLevel) // level is valid
		return w
	}}
	inflaters = sync.Pool{New: func() any { return flate.NewReader(nil) }}
)

// deflater is one connection's compression state.
type deflater struct {
	takeover bool   // false when the client asked for server_no_context_takeover
	history  []byte // the last bytes sent compressed, at most historySize
}

// compress appends payload, compressed, to dst.
func (d *deflater) compress(dst, payload []byte) []byte {
	w := deflaters.Get().(*flate.Writer)
	out := appendWriter{dst}
	var dict []byte
	if d.takeover {
		dict = d.history
	}
	w.ResetDict(&out, dict)
	w.Write(payload) // appendWriter never fails
	w.Flush()
	deflaters.Put(w) // it still points at d.history, harmlessly: the next ResetDict replaces it
	if d.takeover {
		d.remember(payload)
	}
	return bytes.TrimSuffix(out.b, tail)
}

func (d *deflater) remember(p []byte) {
	if len(p) >= historySize {
		d.history = append(d.history[:0], p[len(p)-historySize:]...)
		return
	}
	if over := len(d.history) + len(p) - historySize; over > 0 {
		d.history = append(d.history[:0], d.history[over:]...)
	}
	d.history = append(d.history, p...)
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

var errInflatedTooBig = errors.New("inflated message too big")

// inflate decompresses one client message, refusing to produce more than
// limit bytes (a small compressed message can expand enormously).
func inflate(payload []byte, limit int) ([]byte, error) {
	r := inflaters.Get().(io.ReadCloser)
	defer inflaters.Put(r)
	src := io.MultiReader(bytes.NewReader(payload), bytes.NewReader(tail))
	if err := r.(flate.Resetter).Reset(src, nil); err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	out, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	if len(out) > limit {
		return nil, errInflatedTooBig
	}
	return out, nil
}

// deflateNegotiator accepts the first permessage-deflate offer it can
// honour. It serves one handshake.
type deflateNegotiator struct {
	accepted bool
	params   wsflate.Parameters
}

// negotiate is ws.HTTPUpgrader.Negotiate: it returns the accepted
// extension, or a zero option to decline this offer.
func (n *deflateNegotiator) negotiate(opt httphead.Option) (httphead.Option, error) {
	if n.accepted || !bytes.Equal(opt.Name, wsflate.ExtensionNameBytes) {
		return httphead.Option{}, nil
	}
	var p wsflate.Parameters
	if err := p.Parse(opt); err != nil {
		return httphead.Option{}, nil // a malformed offer is declined, not fatal
	}
	if p.ServerMaxWindowBits.Defined() && p.ServerMaxWindowBits < 15 {
		// Our compressor uses the full 32 KB window.
		return httphead.Option{}, nil
	}
	n.accepted, n.params = true, p
	reply := wsflate.Parameters{ServerNoContextTakeover: p.ServerNoContextTakeover, ClientNoContextTakeover: true}
	return reply.Option(), nil
}

// deflater returns the connection's compression state, or nil when no
// offer was accepted.
func (n *deflateNegotiator) deflater() *deflater {
	if !n.accepted {
		return nil
	}
	return &deflater{takeover: !n.params.ServerNoContextTakeover}
}
