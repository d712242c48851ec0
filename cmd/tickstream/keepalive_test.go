package main

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// rawDial opens a WebSocket with a low-level client that answers nothing
// by itself: no pongs, no close replies.
func rawDial(t *testing.T, s *testServer, query string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + s.validToken()}})}
	conn, br, _, err := d.Dial(ctx, s.wsURL(query))
	if err != nil {
		t.Fatalf("raw dial: %v", err)
	}
	if br != nil {
		ws.PutReader(br)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readFrames reads server frames until a close frame and returns the ping
// count and the close code.
func readFrames(t *testing.T, conn net.Conn) (pings int, code ws.StatusCode) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := ws.ReadFrame(conn)
		if err != nil {
			t.Fatalf("read frame: %v (after %d pings)", err, pings)
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			pings++
		case ws.OpClose:
			code, _ := ws.ParseCloseFrameData(f.Payload)
			return pings, code
		}
	}
}

func TestMissedPongCloses(t *testing.T) {
	s := startServer(t, map[string]string{"WS_HEALTH_CHECK_INTERVAL": "200ms"})
	conn := rawDial(t, s, "?symbols=AAPL")
	pings, code := readFrames(t, conn)
	if pings != 1 || code != 1008 {
		t.Errorf("got %d pings then close %d, want 1 ping then 1008", pings, code)
	}
}

func TestPongKeepsConnection(t *testing.T) {
	s := startServer(t, map[string]string{"WS_HEALTH_CHECK_INTERVAL": "100ms"})
	conn := rawDial(t, s, "?symbols=AAPL")
	pings := 0
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for pings < 5 {
		f, err := ws.ReadFrame(conn)
		if err != nil {
			t.Fatalf("read after %d pings: %v", pings, err)
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			pings++
			if err := wsutil.WriteClientMessage(conn, ws.OpPong, f.Payload); err != nil {
				t.Fatal(err)
			}
		case ws.OpClose:
			t.Fatalf("closed after %d answered pings", pings)
		}
	}
}

func TestIdleTimeoutCloses(t *testing.T) {
	s := startServer(t, map[string]string{"WS_IDLE_TIMEOUT": "1s", "WS_HEALTH_CHECK_INTERVAL": "1h"})
	conn := rawDial(t, s, "?symbols=AAPL")
	start := time.Now()
	if _, code := readFrames(t, conn); code != 1008 {
		t.Errorf("close code: got %d, want 1008", code)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("closed after %v, before the 1s idle timeout", d)
	}
}
