package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestPausingReadersStayIntact: clients that stop reading for longer than
// the write timeout, again and again, so their sockets fill and the server
// switches between its non-blocking and blocking writers, still receive
// every message whole, with seq +1 each time, and converge.
func TestPausingReadersStayIntact(t *testing.T) {
	s, syms := startFloodServer(t, "30ms", "100")
	const clients = 4
	errs := make(chan error, clients)
	for k := range clients {
		go func() { errs <- pausingReader(s, syms, time.Duration(k+1)*400*time.Millisecond) }()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func pausingReader(s *testServer, symbols string, pause time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Control: smallReceiveBuffer}
		return d.DialContext(ctx, network, addr)
	}}}
	c, _, err := websocket.Dial(ctx, s.wsURL("?symbols="+symbols), &websocket.DialOptions{
		HTTPClient: hc, HTTPHeader: http.Header{"Authorization": {"Bearer " + s.validToken()}}})
	if err != nil {
		return err
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 22)
	seq := 0
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		burst := time.Now().Add(100 * time.Millisecond)
		for time.Now().Before(burst) {
			_, data, err := c.Read(ctx)
			if err != nil {
				return fmt.Errorf("read after seq %d: %w", seq, err)
			}
			var m struct {
				Type string
				Seq  int
			}
			if err := json.Unmarshal(data, &m); err != nil {
				return fmt.Errorf("after seq %d: invalid JSON %.60q: %v", seq, data, err)
			}
			if m.Type == "quotes_patch" {
				if m.Seq != seq+1 {
					return fmt.Errorf("seq %d after %d", m.Seq, seq)
				}
				seq = m.Seq
			}
		}
		time.Sleep(pause)
	}
	return nil
}
