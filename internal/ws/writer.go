package ws

import (
	"encoding/json"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"
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
	c.mu.Lock()
	frames := c.out
	c.out = nil
	closing := c.closing
	var patch []byte
	var buf *[]byte
	var ops int
	var conflated uint64
	if closing == nil && c.holds == 0 {
		buf = msgPool.Get().(*[]byte)
		patch, ops, conflated = c.buildPatch((*buf)[:0])
	}
	c.mu.Unlock()
	if patch != nil {
		frames = append(frames, patch)
	}
	if closing != nil {
		frames = append(frames, closing)
	}
	if len(frames) == 0 {
		putBuf(buf, patch)
		return false
	}
	n, err := c.write(frames)
	putBuf(buf, patch)
	m := c.srv.m
	m.BytesSent.Add(float64(n))
	if err != nil {
		c.log.Debug("write failed", "err", err)
		c.dead.Store(true)
		c.nc.Close() // the reader fails and tears down
		if closing != nil {
			close(c.closeSent)
		}
		return false
	}
	m.MessagesSent.Add(float64(len(frames)))
	m.UpdatesDelivered.Add(float64(ops))
	m.ConflatedUpdates.Add(float64(conflated))
	if closing != nil {
		c.dead.Store(true)
		// Bound the wait for the client's close reply.
		c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.CloseGrace))
		close(c.closeSent)
		return false
	}
	return true
}

func putBuf(buf *[]byte, used []byte) {
	if buf == nil {
		return
	}
	if cap(used) > cap(*buf) {
		*buf = used[:0] // keep the grown buffer
	}
	if cap(*buf) <= maxPooled {
		msgPool.Put(buf)
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
func (c *conn) buildPatch(b []byte) (frame []byte, ops int, conflated uint64) {
	snapshot := c.seq == 0
	b = append(b[:0], make([]byte, maxHeaderLen)...)
	b = append(b, `{"type":"quotes_patch","seq":`...)
	b = strconv.AppendUint(b, c.seq+1, 10)
	b = append(b, `,"operations":[`...)
	if snapshot {
		b = append(b, `{"op":"add","path":"/quotes","value":{}},`...)
	}
	b, ch := c.sub.AppendChanges(b)
	if ch.Ops == 0 {
		if !snapshot {
			return nil, 0, 0
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
	return sealFrame(b, ws.OpText), ch.Ops, ch.Conflated
}
