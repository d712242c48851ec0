package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// slot is connection number id: its symbols and, while one is open, the
// connection and the document it builds. A slot outlives its connections:
// churn and reconnects open a new one in the same slot, with a fresh
// document. Its state is kept small; thousands of slots make a run.
type slot struct {
	id      int
	symbols []string
	slow    bool   // stop reading after the snapshot
	shard   *shard // where its messages are counted

	mu       sync.Mutex      // guards the fields below; the reader holds it while applying a patch
	ws       *websocket.Conn // the open connection; nil between connections
	byUs     bool            // tickload is closing ws (churn, end of run): its end is not the server's doing
	doc      document
	seq      uint64 // seq of the last quotes_patch
	snapshot bool   // the snapshot (seq 1) has been applied
}

// errStopReading ends a slow connection's reader after its snapshot.
var errStopReading = errors.New("slow connection stops reading")

// attach makes c the slot's connection, with an empty document. It closes
// c and returns false when the run is ending: the caller then stops.
func (s *slot) attach(c *websocket.Conn, ending <-chan struct{}) bool {
	s.mu.Lock()
	select {
	case <-ending:
		s.mu.Unlock()
		c.CloseNow()
		return false
	default:
	}
	s.ws, s.byUs, s.doc, s.seq, s.snapshot = c, false, document{}, 0, false
	s.mu.Unlock()
	return true
}

// detach forgets the connection whose reader returned and reports whether
// tickload closed it.
func (s *slot) detach() (byUs bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byUs = s.byUs
	s.ws, s.byUs = nil, false
	return byUs
}

// closeByUs starts closing the slot's connection with code; it reports
// false when there is none or it is already closing. The close handshake
// runs in the background, and the reader sees its end.
func (s *slot) closeByUs(code websocket.StatusCode, reason string) bool {
	s.mu.Lock()
	c := s.ws
	if c == nil || s.byUs {
		s.mu.Unlock()
		return false
	}
	s.byUs = true
	s.mu.Unlock()
	if s.slow {
		// Its reader is gone, so nobody would read the close reply.
		c.CloseNow()
	} else {
		go c.Close(code, reason)
	}
	return true
}

// read runs the connection's reader until the connection ends, recording
// every message. Each connection has its own reader and the arrival time
// is taken as soon as a message is read, so a slow server shows as latency
// instead of slowing the measurement down (no coordinated omission).
func (s *slot) read(c *websocket.Conn, st *stats) error {
	var m serverMessage // reused: its operations slice grows to the largest message
	var updates []string
	var lats []int64
	for {
		typ, data, err := c.Read(context.Background()) // no Done channel: no timer per read
		arrival := time.Now()
		if err != nil {
			return err
		}
		var errs int
		updates, errs = s.handle(typ, data, &m, updates[:0], st)
		lats = lats[:0]
		for _, lu := range updates {
			t, err := time.Parse(time.RFC3339Nano, lu)
			if err != nil {
				errs++
				st.problem("conn %d: last_updated %q: %v", s.id, lu, err)
				continue
			}
			lats = append(lats, arrival.Sub(t).Microseconds())
		}
		s.shard.record(len(data), lats, errs)
		if s.slow && s.hasSnapshot() {
			return errStopReading
		}
	}
}

func (s *slot) hasSnapshot() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshot
}

// handle decodes one message and applies a quotes_patch to the document.
// It returns the last_updated of each symbol update and the number of
// protocol errors: anything but a well-formed text message of a known
// type, a seq that is not the last one +1, an operation the applier does
// not support. The server sends error messages only in answer to client
// messages, and tickload sends none, so one is an error too.
func (s *slot) handle(typ websocket.MessageType, data []byte, m *serverMessage, updates []string, st *stats) ([]string, int) {
	if typ != websocket.MessageText {
		st.problem("conn %d: binary message", s.id)
		return updates, 1
	}
	if err := decodeMessage(data, m); err != nil {
		st.problem("conn %d: message %s: %v", s.id, clip(data), err)
		return updates, 1
	}
	switch m.Type {
	case "quotes_patch":
		return s.patch(m, updates, st)
	case "subscribed", "pong":
		return updates, 0
	default:
		st.problem("conn %d: unexpected message %s", s.id, clip(data))
		return updates, 1
	}
}

func (s *slot) patch(m *serverMessage, updates []string, st *stats) ([]string, int) {
	errs := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Seq != s.seq+1 {
		errs++
		st.problem("conn %d: seq %d after %d", s.id, m.Seq, s.seq)
	}
	first := !s.snapshot
	s.seq, s.snapshot = m.Seq, true
	if first && (len(m.Operations) == 0 || m.Operations[0].Op != "add" || m.Operations[0].Path != "/quotes") {
		errs++
		st.problem("conn %d: the first quotes_patch does not start with add /quotes", s.id)
	}
	if !first && len(m.Operations) == 0 {
		errs++
		st.problem("conn %d: quotes_patch seq %d has no operations", s.id, m.Seq)
	}
	updates, err := s.doc.apply(m.Operations, updates)
	if err != nil {
		errs++
		st.problem("conn %d: seq %d: %v", s.id, m.Seq, err)
	}
	return updates, errs
}

// closeCode is the code a server-initiated close is counted under: the
// close frame's, or 1006 (RFC 6455's "abnormal closure") when the socket
// ended without one.
func closeCode(err error) int {
	if code := websocket.CloseStatus(err); code != -1 {
		return int(code)
	}
	return int(websocket.StatusAbnormalClosure)
}
