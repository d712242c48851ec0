package ws

import (
	"bufio"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/time/rate"

	"github.com/tickstream/tickstream/internal/auth"
	"github.com/tickstream/tickstream/internal/hub"
)

// conn is one WebSocket client. No goroutine waits on it while it is idle:
// reads run when the poller reports data (see poll_linux.go), and a writer
// goroutine exists only while there is something to send (see kick). One
// timer per connection drives pings and the idle timeout.
type conn struct {
	srv  *Server
	nc   net.Conn
	id   uint64
	user string // the token's subject: refreshed tokens must name the same
	who  string // user and remote address, for logs
	sub  *hub.Subscriber
	fr   frameReader
	// deflate compresses quotes_patch messages; nil without
	// permessage-deflate. Used under mu (by buildPatch's caller).
	deflate *deflater

	writing atomic.Bool // a writer goroutine is running
	again   atomic.Bool // work arrived while the writer was running
	dead    atomic.Bool // the socket failed or the close frame went out: write nothing more
	gone    atomic.Bool // teardown has run

	lastFrame    atomic.Int64 // unix nanoseconds of the last frame from the client
	awaitingPong atomic.Bool
	peerClosed   atomic.Bool // the client's close frame arrived

	// Owned by the reader (one at a time): the client's message budget,
	// made at its first message so idle connections hold none, and the
	// messages refused since it was last full.
	limiter *rate.Limiter
	strikes int

	mu        sync.Mutex  // guards the fields below
	out       [][]byte    // frames for the writer: replies, pongs, pings
	seq       uint64      // seq of the last quotes_patch sent
	invalid   []string    // handshake symbols not served; reported in the snapshot
	forbidden []string    // handshake symbols not entitled; reported in the snapshot
	claims    auth.Claims // of the token in force: entitlements and expiry
	holds     int         // while > 0 the reader is between a subscribe and its ack: no patch is built
	closing   []byte      // close frame to send; once set nothing else is sent
	timer     *time.Timer
	nextPing  time.Time

	// Owned by the writer goroutine (one at a time, handed over through
	// writing): the unsent tail of a write that hit its deadline, the
	// deadlines hit in a row, and whether the close frame was in the
	// last write.
	rest        []byte
	stalls      int
	closeQueued bool
}

func newConn(s *Server, nc net.Conn, br *bufio.Reader, d *deflater, id uint64, user, remote string) *conn {
	c := &conn{srv: s, nc: nc, id: id, user: user, who: user + "@" + remote, deflate: d}
	r := &socketReader{nc: nc}
	if n := br.Buffered(); n > 0 {
		// The client sent frames right behind its handshake: read those
		// bytes first, then drop the handshake's bufio.Reader.
		early, _ := br.Peek(n)
		r.early = append([]byte(nil), early...)
	}
	c.fr = frameReader{r: r, compress: d != nil, onPing: c.onPing, onPong: c.onPong, onFrame: c.onFrame}
	c.sub = s.hub.NewSubscriber(c.kick)
	return c
}

// socketReader reads the bytes that arrived with the handshake, then the
// socket itself: no buffer of its own.
type socketReader struct {
	early []byte
	nc    net.Conn
}

func (r *socketReader) Read(p []byte) (int, error) {
	if len(r.early) == 0 {
		return r.nc.Read(p)
	}
	n := copy(p, r.early)
	r.early = r.early[n:]
	return n, nil
}

// log returns the connection's logger. It is made on demand: logging is
// rare, and a logger per connection would cost memory on every idle one.
func (c *conn) log() *slog.Logger { return c.srv.log.With("conn", c.id, "client", c.who) }

// start subscribes the handshake's symbols, queues the snapshot, starts the
// timer and hands the connection to the poller (or to a reader goroutine).
func (c *conn) start(p Params) {
	now := time.Now()
	c.lastFrame.Store(now.UnixNano())
	c.mu.Lock()
	c.invalid, c.forbidden = orEmpty(p.Invalid), orEmpty(p.Forbidden)
	c.claims = p.Claims
	// The first ping falls at a random point of the interval, so clients
	// that all reconnected at once are not all pinged at once.
	c.nextPing = now.Add(rand.N(c.srv.cfg.PingInterval) + time.Millisecond)
	c.timer = time.AfterFunc(c.untilNextCheck(now), c.onTimer)
	// A tick that marks the first symbols while the others are still being
	// added must not wake a writer into a snapshot that lacks them.
	c.holds++
	c.mu.Unlock()
	c.sub.Subscribe(p.Entries)
	c.mu.Lock()
	c.holds--
	c.mu.Unlock()
	c.kick() // the snapshot is due even with no symbols
	if c.srv.poller == nil || c.srv.poller.add(c) != nil {
		go func() {
			for c.readOne() {
			}
		}()
	}
}

// readReady runs when the poller saw data: it reads what is there, then
// re-arms the poller. At most one runs per connection at a time.
func (c *conn) readReady() {
	for c.readOne() {
		if !c.fr.buffered() {
			if c.srv.poller.rearm(c) != nil {
				c.teardown()
			}
			return
		}
	}
}

// readOne reads and handles one message or control frame, and reports
// whether the connection is still open for reading.
func (c *conn) readOne() bool {
	msg, err := c.fr.readMessage()
	if err != nil {
		return c.readFailed(err)
	}
	if msg != nil {
		c.srv.m.MessagesReceived.Inc()
		c.srv.m.BytesReceived.Add(float64(len(msg)))
		if c.admit(msg) {
			c.handle(msg)
		}
	}
	return !c.gone.Load()
}

// onFrame runs for every frame from the client.
func (c *conn) onFrame() { c.lastFrame.Store(time.Now().UnixNano()) }

// onPing answers a ping frame, which counts against the message rate: a
// ping flood gets no pongs, and is closed like any other flood.
func (c *conn) onPing(payload []byte) {
	if c.admit(nil) {
		c.enqueue(newFrame(ws.OpPong, payload))
	}
}

func (c *conn) onPong() { c.awaitingPong.Store(false) }

// expiry is when the token in force stops holding the connection open:
// its exp plus the leeway, zero when it has none; c.mu is held.
func (c *conn) expiry() time.Time {
	if c.claims.ExpiresAt.IsZero() {
		return time.Time{}
	}
	return c.claims.ExpiresAt.Add(c.srv.cfg.Leeway)
}

// onTimer closes a connection whose token expired, sends pings, closes a
// peer that missed its pong, and closes a connection that sent nothing for
// IdleTimeout.
func (c *conn) onTimer() {
	now := time.Now()
	c.mu.Lock()
	exp := c.expiry()
	expired := !exp.IsZero() && !now.Before(exp)
	c.mu.Unlock()
	if expired {
		c.reply(errorMessage{Type: "error", Code: CodeTokenExpired,
			Message: "the token expired; send {\"type\":\"auth\",\"token\":...} before exp to extend the connection"})
		c.close(CloseTokenExpired, "token expired")
		return
	}
	if now.Sub(time.Unix(0, c.lastFrame.Load())) >= c.srv.cfg.IdleTimeout {
		c.close(ClosePolicy, "idle timeout")
		return
	}
	c.mu.Lock()
	ping := !now.Before(c.nextPing)
	if ping {
		c.nextPing = now.Add(c.srv.cfg.PingInterval)
	}
	c.mu.Unlock()
	if ping {
		if c.awaitingPong.Load() {
			c.close(ClosePolicy, "no pong to the last ping")
			return
		}
		c.awaitingPong.Store(true)
		c.enqueue(pingFrame)
	}
	c.mu.Lock()
	if c.closing == nil && !c.gone.Load() {
		c.timer.Reset(c.untilNextCheck(now))
	}
	c.mu.Unlock()
}

// untilNextCheck is the time to the next ping, idle or expiry deadline;
// c.mu is held.
func (c *conn) untilNextCheck(now time.Time) time.Duration {
	idle := time.Unix(0, c.lastFrame.Load()).Add(c.srv.cfg.IdleTimeout)
	d := min(c.nextPing.Sub(now), idle.Sub(now))
	if exp := c.expiry(); !exp.IsZero() {
		d = min(d, exp.Sub(now))
	}
	return max(d, time.Millisecond)
}

var pingFrame = newFrame(ws.OpPing, nil)

// readFailed decides how a connection whose read failed goes on, and
// reports whether reading should continue (to receive the client's reply to
// a close frame).
func (c *conn) readFailed(err error) bool {
	var ce *closeError
	var pc *peerClosedError
	switch {
	case errors.As(err, &pc):
		c.log().Debug("client closed", "code", int(pc.code))
		c.peerClosed.Store(true)
		if !c.queueClose(pc.code, "") && c.dead.Load() {
			c.teardown() // our close frame was out already: this was the reply
		}
		return false
	case errors.As(err, &ce):
		c.log().Info("closing: protocol violation", "code", int(ce.code), "reason", ce.reason)
		c.close(ce.code, ce.reason)
		return false
	}
	if !c.dead.Load() {
		c.log().Debug("read ended", "err", err)
	}
	c.teardown()
	return false
}

// close starts a server-initiated close with code: see queueClose.
func (c *conn) close(code ws.StatusCode, reason string) {
	if c.queueClose(code, reason) {
		c.srv.m.Closes.WithLabelValues(strconv.Itoa(int(code))).Inc()
	}
}

// queueClose sends a close frame with code after whatever is queued (see
// finishClose for what follows). Only the first call counts: it reports
// whether it was the first.
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

// finishClose runs once the close frame is on the wire. If the client
// already closed, the connection ends now; otherwise its reply is awaited
// for CloseGrace at most.
func (c *conn) finishClose() {
	c.dead.Store(true)
	if c.peerClosed.Load() {
		c.teardown()
		return
	}
	time.AfterFunc(c.srv.cfg.CloseGrace, c.teardown)
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

// teardown frees everything the connection holds. Any path may call it,
// any number of times; the first call does the work.
func (c *conn) teardown() {
	if c.gone.Swap(true) {
		return
	}
	c.dead.Store(true)
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	if c.srv.poller != nil {
		c.srv.poller.remove(c)
	}
	c.sub.Close()
	c.nc.Close()
	c.srv.unregister(c)
}
