package ws

import (
	"encoding/json"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/tickstream/tickstream/internal/hub"
)

// kick makes sure a writer will look at the connection. It never blocks: it
// starts a writer goroutine when none runs, or tells the running one to go
// round again.
func (c *conn) kick() {
	c.again.Store(true)
	if c.writing.CompareAndSwap(false, true) {
		go c.writeLoop()
	}
}

// writeLoop sends until nothing is pending, then exits: no goroutine waits
// on an idle connection.
func (c *conn) writeLoop() {
	for {
		c.again.Store(false)
		for c.flush() {
		}
		c.writing.Store(false)
		// A kick between the last flush and the Store above found the
		// writer still running; take its work over unless a new writer did.
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

// flush writes everything pending in one system call and reports whether it
// wrote anything.
func (c *conn) flush() bool {
	if c.dead.Load() {
		return false
	}
	frames, msg, ch, closing, ok := c.collect()
	if !ok {
		return false
	}
	n, err := c.write(frames)
	if msg != nil {
		putBuf(msg)
	}
	m := c.srv.m
	m.BytesSent.Add(float64(n))
	if err != nil {
		c.log.Debug("write failed", "err", err)
		c.dead.Store(true)
		c.nc.Close() // the reader fails and tears down
		if closing {
			close(c.closeSent)
		}
		return false
	}
	m.MessagesSent.Add(float64(len(frames)))
	m.UpdatesDelivered.Add(float64(ch.Ops))
	m.ConflatedUpdates.Add(float64(ch.Conflated))
	if closing {
		c.dead.Store(true)
		// Bound the wait for the client's close reply.
		c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.CloseGrace))
		close(c.closeSent)
		return false
	}
	return true
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
		switch {
		case patch == nil:
			msgPool.Put(msg)
			msg = nil
		case snapshot:
			frames = append([][]byte{patch}, frames...)
		default:
			frames = append(frames, patch)
		}
		if patch != nil && cap(patch) > cap(*msg) {
			*msg = patch[:0] // keep the grown buffer
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

func (c *conn) write(frames [][]byte) (int64, error) {
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	if len(frames) == 1 {
		n, err := c.nc.Write(frames[0])
		return int64(n), err
	}
	bufs := net.Buffers(frames)
	return bufs.WriteTo(c.nc)
}

// buildPatch assembles the next quotes_patch frame in b from the shared
// operation fragments of the pending symbols; c.mu is held. It returns nil
// when there is nothing to send. The first message (seq 1) is the snapshot:
// it starts with add /quotes {} and carries invalid_symbols.
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
		c.invalid = nil
	}
	b = append(b, '}')
	c.seq++
	return sealFrame(b, ws.OpText), ch
}
