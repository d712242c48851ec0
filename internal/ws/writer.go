package ws

import (
	"encoding/json"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/tickstream/tickstream/internal/hub"
)

// kick makes sure a writer will look at the connection. It never blocks:
// it queues the connection for the writer pool when no writer has it, or
// tells the one that has it to go round again.
func (c *conn) kick() {
	c.again.Store(true)
	if c.writing.CompareAndSwap(false, true) {
		c.srv.writers.submit(c)
	}
}

// writers is a small pool of goroutines that write for every connection.
// They never block on a socket: a write that cannot complete at once hands
// the connection to a goroutine of its own (writeLoop with blocking set),
// which waits with deadlines and applies the slow-consumer policy. So one
// stuck client never delays another, and the common case costs no
// goroutine start and no stack growth per message.
type writers struct{ q chan *conn }

func newWriters(n, queue int) *writers {
	w := &writers{q: make(chan *conn, queue)}
	for range n {
		go func() {
			for c := range w.q {
				c.writeLoop(false)
			}
		}()
	}
	return w
}

// submit queues c; with the queue full it starts a goroutine instead,
// rather than block the hub.
func (w *writers) submit(c *conn) {
	select {
	case w.q <- c:
	default:
		go c.writeLoop(false)
	}
}

// writeLoop sends until nothing is pending, then lets the connection go:
// no goroutine waits on an idle connection. With blocking unset (the pool)
// a write that would block hands the connection over to a new goroutine.
func (c *conn) writeLoop(blocking bool) {
	for {
		c.again.Store(false)
		for {
			more, handoff := c.flush(blocking)
			if handoff {
				go c.writeLoop(true) // keeps the writer role
				return
			}
			if !more {
				break
			}
		}
		if blocking {
			// The non-blocking writer must not meet this writer's
			// deadline: an expired one fails a write before it starts.
			c.nc.SetWriteDeadline(time.Time{})
			blocking = false
		}
		c.writing.Store(false)
		// A kick between the last flush and the Store above found the
		// writer still busy; take its work over unless a new writer did.
		if !c.again.Load() || !c.writing.CompareAndSwap(false, true) {
			return
		}
	}
}

// msgPool holds message buffers between writes, so idle connections hold
// none. Buffers start with maxHeaderLen reserved bytes for the frame header.
var msgPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// maxPooled keeps a rare huge snapshot from pinning its buffer in the pool.
const maxPooled = 64 << 10

// flush writes everything pending in one system call. It reports whether
// the writer should go round again, and, when not blocking, whether the
// socket was full so that the connection needs a blocking writer.
func (c *conn) flush(blocking bool) (more, handoff bool) {
	if c.dead.Load() {
		return false, false
	}
	if len(c.rest) > 0 {
		if !blocking {
			return false, true
		}
		// The last write stopped half-way: finish that first. Meanwhile
		// new changes wait in the subscriber's pending set.
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
		n, err := c.nc.Write(c.rest)
		c.rest = c.rest[n:]
		c.srv.m.BytesSent.Add(float64(n))
		return c.afterWrite(err), false
	}
	frames, msg, ch, closing, ok := c.collect()
	if !ok {
		return false, false
	}
	var n int64
	var err error
	if blocking {
		bufs := net.Buffers(frames)
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
		n, err = bufs.WriteTo(c.nc) // writev; consumes bufs
		if err != nil && len(bufs) > 0 {
			c.rest = slices.Concat(bufs...) // copied: msg goes back to the pool
		}
	} else {
		var done bool
		n, done, err = tryWritev(c.nc, frames)
		if !done && err == nil {
			c.rest = unwritten(frames, n)
			handoff = true
		}
	}
	if msg != nil {
		putBuf(msg)
	}
	m := c.srv.m
	m.BytesSent.Add(float64(n))
	m.MessagesSent.Add(float64(len(frames)))
	m.UpdatesDelivered.Add(float64(ch.Ops))
	m.ConflatedUpdates.Add(float64(ch.Conflated))
	if !ch.Oldest.IsZero() {
		m.FanoutLatency.Observe(time.Since(ch.Oldest).Seconds())
	}
	c.closeQueued = closing
	if handoff {
		return false, true
	}
	return c.afterWrite(err), false
}

// unwritten copies what is left of frames after n bytes were written.
func unwritten(frames [][]byte, n int64) []byte {
	var out []byte
	for _, f := range frames {
		if n >= int64(len(f)) {
			n -= int64(len(f))
			continue
		}
		out = append(out, f[n:]...)
		n = 0
	}
	return out
}

// afterWrite applies the slow-consumer policy to a write's outcome and
// reports whether the writer should go on. A write that hits its deadline
// is retried; WS_CIRCUIT_BREAKER_THRESHOLD of them in a row close the
// connection with 4008.
func (c *conn) afterWrite(err error) bool {
	var ne net.Error
	switch {
	case err == nil && len(c.rest) == 0:
		c.stalls = 0
		if c.closeQueued {
			c.finishClose()
			return false
		}
		return true
	case errors.As(err, &ne) && ne.Timeout():
		c.stalls++
		c.srv.m.WriteTimeouts.Inc()
		if c.stalls < c.srv.cfg.SlowConsumerStalls {
			return true
		}
		c.dropSlowConsumer()
		return false
	default:
		if !c.gone.Load() {
			c.log().Debug("write failed", "err", err)
		}
		c.teardown()
		return false
	}
}

// dropSlowConsumer closes a connection that has not drained for
// SlowConsumerStalls write deadlines in a row. The close frame goes behind
// the undelivered bytes, best effort, and the socket is closed at once.
func (c *conn) dropSlowConsumer() {
	c.log().Info("closing slow consumer", "stalls", c.stalls, "undelivered_bytes", len(c.rest))
	c.srv.m.SlowConsumers.Inc()
	c.srv.m.Closes.WithLabelValues(strconv.Itoa(int(CloseSlowConsumer))).Inc()
	c.dead.Store(true)
	c.nc.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if !c.closeQueued {
		bufs := net.Buffers{c.rest, closeFrame(CloseSlowConsumer, "slow consumer")}
		bufs.WriteTo(c.nc)
	}
	c.rest = nil
	c.teardown()
}

// collect takes what is pending, in the order it goes on the wire: the
// snapshot first of all, queued frames, the quotes_patch, the close frame.
// msg is the pooled buffer holding the patch, to give back after writing.
func (c *conn) collect() (frames [][]byte, msg *[]byte, ch hub.Changes, closing, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	closing = c.closing != nil
	if !closing && c.holds > 0 && c.seq == 0 {
		// The snapshot must be the first message; it waits for the
		// subscribe in progress, whose ack kicks the writer again.
		return nil, nil, ch, false, false
	}
	frames, c.out = c.out, nil
	if !closing && c.holds == 0 {
		msg = msgPool.Get().(*[]byte)
		var patch []byte
		snapshot := c.seq == 0
		patch, ch = c.buildPatch(*msg)
		if patch == nil {
			putBuf(msg)
			msg = nil
		} else {
			patch, msg = c.seal(patch, msg)
		}
		switch {
		case patch == nil:
		case snapshot:
			frames = append([][]byte{patch}, frames...)
		default:
			frames = append(frames, patch)
		}
	}
	if closing {
		frames = append(frames, c.closing)
	}
	return frames, msg, ch, closing, len(frames) > 0
}

func putBuf(msg *[]byte) {
	if cap(*msg) <= maxPooled {
		msgPool.Put(msg)
	}
}

// seal turns the buffer buildPatch filled (reserved header bytes, then the
// payload) into a frame, compressed into another pooled buffer when the
// connection negotiated permessage-deflate. It returns the frame and the
// pooled buffer that holds it.
func (c *conn) seal(b []byte, msg *[]byte) ([]byte, *[]byte) {
	if cap(b) > cap(*msg) {
		*msg = b[:0] // keep the grown buffer
	}
	if c.deflate == nil {
		return sealFrame(b, ws.OpText, 0), msg
	}
	z := msgPool.Get().(*[]byte)
	zb := c.deflate.compress(append((*z)[:0], make([]byte, maxHeaderLen)...), b[maxHeaderLen:])
	if cap(zb) > cap(*z) {
		*z = zb[:0]
	}
	putBuf(msg)
	return sealFrame(zb, ws.OpText, rsv1), z
}

// buildPatch assembles the next quotes_patch message in b, after
// maxHeaderLen bytes reserved for the frame header, from the shared
// operation fragments of the pending symbols; c.mu is held. It returns nil
// when there is nothing to send. The first message (seq 1) is the snapshot:
// it starts with add /quotes {} and carries invalid_symbols and
// forbidden_symbols.
func (c *conn) buildPatch(b []byte) (frame []byte, ch hub.Changes) {
	snapshot := c.seq == 0
	b = append(b[:0], make([]byte, maxHeaderLen)...)
	b = append(b, `{"type":"quotes_patch","seq":`...)
	b = strconv.AppendUint(b, c.seq+1, 10)
	b = append(b, `,"operations":[`...)
	if snapshot {
		b = append(b, `{"op":"add","path":"/quotes","value":{}},`...)
	}
	b, ch = c.sub.AppendChanges(b)
	if ch.Ops == 0 {
		if !snapshot {
			return nil, ch
		}
		b = b[:len(b)-1] // the comma after add /quotes
	}
	b = append(b, ']')
	if snapshot {
		inv, _ := json.Marshal(c.invalid) // a []string always marshals
		b = append(b, `,"invalid_symbols":`...)
		b = append(b, inv...)
		forb, _ := json.Marshal(c.forbidden)
		b = append(b, `,"forbidden_symbols":`...)
		b = append(b, forb...)
		c.invalid, c.forbidden = nil, nil
	}
	b = append(b, '}')
	c.seq++
	return b, ch
}
