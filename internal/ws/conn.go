package ws

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/tickstream/tickstream/internal/hub"
)

// conn is one WebSocket client. Its reader goroutine lives as long as the
// connection; a writer goroutine exists only while there is something to
// send (see kick), so an idle connection costs one goroutine and no buffer.
type conn struct {
	srv *Server
	nc  net.Conn
	id  uint64
	who string // the token's subject and the remote address, for logs
	sub *hub.Subscriber
	fr  frameReader
	// deflate compresses quotes_patch messages; nil without
	// permessage-deflate. Used under mu (by buildPatch's caller).
	deflate *deflater

	writing atomic.Bool // a writer goroutine is running
	again   atomic.Bool // work arrived while the writer was running
	dead    atomic.Bool // the socket failed or was closed: write nothing more

	mu        sync.Mutex // guards the fields below
	out       [][]byte   // frames for the writer: replies, pongs, pings
	seq       uint64     // seq of the last quotes_patch sent
	invalid   []string   // handshake symbols not served; reported in the snapshot
	holds     int        // while > 0 the reader is between a subscribe and its ack: no patch is built
	closing   []byte     // close frame to send; once set nothing else is sent
	closeSent chan struct{}
	ping      *time.Timer

	awaitingPong atomic.Bool

	// Owned by the writer goroutine (one at a time, handed over through
	// writing): the unsent tail of a write that hit its deadline, the
	// deadlines hit in a row, and whether the close frame was in the
	// last write.
	rest        []byte
	stalls      int
	closeQueued bool
}

func newConn(s *Server, nc net.Conn, br *bufio.Reader, d *deflater, id uint64, who string) *conn {
	c := &conn{srv: s, nc: nc, id: id, who: who, deflate: d, closeSent: make(chan struct{})}
	var r io.Reader = nc
	if n := br.Buffered(); n > 0 {
		// The client sent frames right behind its handshake; read those
		// bytes first, then drop the handshake's bufio.Reader.
		early, _ := br.Peek(n)
		r = io.MultiReader(bytesReader(early), nc)
	}
	c.fr = frameReader{r: r, compress: d != nil, onPing: c.onPing, onPong: c.onPong, onFrame: c.onFrame}
	c.sub = s.hub.NewSubscriber(c.kick)
	return c
}

func bytesReader(b []byte) io.Reader {
	cp := append([]byte(nil), b...)
	return &sliceReader{cp}
}

type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// log returns the connection's logger. It is made on demand: logging is
// rare, and a logger per connection would cost memory on every idle one.
func (c *conn) log() *slog.Logger { return c.srv.log.With("conn", c.id, "client", c.who) }

// serve subscribes the handshake's symbols, sends the snapshot and reads
// client messages until the connection ends.
func (c *conn) serve(p Params) {
	defer c.teardown()
	c.mu.Lock()
	c.invalid = p.Invalid
	if c.invalid == nil {
		c.invalid = []string{}
	}
	// The first ping is spread over the interval so that clients that all
	// reconnected at once are not all pinged at once.
	c.ping = time.AfterFunc(rand.N(c.srv.cfg.PingInterval)+time.Millisecond, c.onPingTimer)
	c.mu.Unlock()
	c.sub.Subscribe(p.Entries)
	c.kick() // the snapshot is due even with no symbols
	c.onFrame()
	for {
		msg, err := c.fr.readMessage()
		if err != nil {
			c.readFailed(err)
			return
		}
		c.srv.m.MessagesReceived.Inc()
		c.srv.m.BytesReceived.Add(float64(len(msg)))
		c.handle(msg)
	}
}

// onFrame runs for every frame from the client: it pushes the idle deadline.
func (c *conn) onFrame() {
	c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.IdleTimeout))
}

func (c *conn) onPing(payload []byte) { c.enqueue(newFrame(ws.OpPong, payload)) }

func (c *conn) onPong() { c.awaitingPong.Store(false) }

func (c *conn) onPingTimer() {
	if c.awaitingPong.Load() {
		c.close(ClosePolicy, "no pong to the last ping")
		return
	}
	c.awaitingPong.Store(true)
	c.enqueue(pingFrame)
	c.mu.Lock()
	if c.closing == nil {
		c.ping.Reset(c.srv.cfg.PingInterval)
	}
	c.mu.Unlock()
}

var pingFrame = newFrame(ws.OpPing, nil)

// readFailed decides how a connection whose reader stopped ends.
func (c *conn) readFailed(err error) {
	var ce *closeError
	var pc *peerClosedError
	var ne net.Error
	switch {
	case errors.As(err, &pc):
		c.log().Debug("client closed", "code", int(pc.code))
		c.queueClose(pc.code, "")
	case errors.As(err, &ce):
		c.log().Info("closing: protocol violation", "code", int(ce.code), "reason", ce.reason)
		c.close(ce.code, ce.reason)
	case errors.As(err, &ne) && ne.Timeout() && !c.isClosing():
		c.close(ClosePolicy, "idle timeout")
	default:
		if !c.isClosing() && !c.dead.Load() {
			c.log().Debug("read ended", "err", err)
		}
		return
	}
	select {
	case <-c.closeSent:
	case <-time.After(c.srv.cfg.CloseGrace):
	}
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing != nil
}

// close starts a server-initiated close with code: see queueClose.
func (c *conn) close(code ws.StatusCode, reason string) {
	if c.queueClose(code, reason) {
		c.srv.m.Closes.WithLabelValues(strconv.Itoa(int(code))).Inc()
	}
}

// queueClose sends a close frame with code after whatever is queued; the
// reader then waits for the client's reply. Only the first call counts: it
// reports whether it was the first.
func (c *conn) queueClose(code ws.StatusCode, reason string) bool {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return false
	}
	c.closing = closeFrame(code, reason)
	c.mu.Unlock()
	c.kick()
	return true
}

// closeNow sends a close frame and drops the connection at once; for a
// connection that never started serving.
func (c *conn) closeNow(code ws.StatusCode, reason string) {
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.nc.Write(closeFrame(code, reason))
	c.nc.Close()
}

// enqueue queues a frame for the writer.
func (c *conn) enqueue(frame []byte) {
	c.mu.Lock()
	if c.closing == nil {
		c.out = append(c.out, frame)
	}
	c.mu.Unlock()
	c.kick()
}

func (c *conn) teardown() {
	c.dead.Store(true)
	c.mu.Lock()
	if c.ping != nil {
		c.ping.Stop()
	}
	c.mu.Unlock()
	c.sub.Close()
	c.nc.Close()
	c.srv.unregister(c)
}
