package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestSlowConsumerClosed4008: a client that never reads is closed with 4008
// once its socket stops draining, while a calm client on the same server
// keeps receiving every tick.
func TestSlowConsumerClosed4008(t *testing.T) {
	s := startServer(t, map[string]string{
		"SYNTHETIC_SYMBOLS":            "100",
		"WS_MAX_SYMBOLS":               "100",
		"SIM_UPDATE":                   "all",
		"PRICE_UPDATE_INTERVAL":        "10ms",
		"WS_WRITE_TIMEOUT":             "50ms",
		"WS_CIRCUIT_BREAKER_THRESHOLD": "3",
		"WS_HEALTH_CHECK_INTERVAL":     "1h",
		"LOG_LEVEL":                    "info",
	})
	syms := make([]string, 100)
	for i := range syms {
		syms[i] = fmt.Sprintf("SYN%05d", i+1)
	}
	calm := s.dial("?symbols=SYN00001")
	calm.next()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{
		Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + s.validToken()}}),
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
				return serr
			}}
			return nd.DialContext(ctx, network, addr)
		},
	}
	stuck, _, _, err := d.Dial(ctx, s.wsURL("?symbols="+strings.Join(syms, ",")))
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()

	// The calm client keeps getting updates while the stuck one fills up.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(s.logs.String(), "closing slow consumer") {
		if time.Now().After(deadline) {
			t.Fatal("the stuck client was not closed within 60s")
		}
		if m, _ := calm.next(); m.Type != "quotes_patch" {
			t.Fatalf("calm client got %s", m.Type)
		}
	}
	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "tickstream_slow_consumer_closes_total 1") {
		t.Errorf("metrics do not count one slow-consumer close")
	}
	// The calm client still receives after the close.
	for range 5 {
		calm.nextOf("quotes_patch")
	}
}
