package main

import (
	"context"
	"errors"
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
	s, syms := startFloodServer(t, "50ms", "3")
	calm := s.dial("?symbols=SYN00001")
	calm.next()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{
		Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + s.validToken()}}),
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := net.Dialer{Control: smallReceiveBuffer}
			return nd.DialContext(ctx, network, addr)
		},
	}
	stuck, _, _, err := d.Dial(ctx, s.wsURL("?symbols="+syms))
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

// startFloodServer runs a server that moves 100 symbols every 10 ms, so a
// client that stops reading fills its socket within a second. It returns
// the symbols, joined for ?symbols=.
func startFloodServer(t *testing.T, writeTimeout, stalls string) (*testServer, string) {
	t.Helper()
	s := startServer(t, map[string]string{
		"SYNTHETIC_SYMBOLS":            "100",
		"WS_MAX_SYMBOLS":               "100",
		"SIM_UPDATE":                   "all",
		"PRICE_UPDATE_INTERVAL":        "10ms",
		"WS_WRITE_TIMEOUT":             writeTimeout,
		"WS_CIRCUIT_BREAKER_THRESHOLD": stalls,
		"WS_HEALTH_CHECK_INTERVAL":     "1h",
		"LOG_LEVEL":                    "info",
	})
	syms := make([]string, 100)
	for i := range syms {
		syms[i] = fmt.Sprintf("SYN%05d", i+1)
	}
	return s, strings.Join(syms, ",")
}

// smallReceiveBuffer is a net.Dialer Control that shrinks the socket's
// receive buffer, so that a client that stops reading stalls the server
// sooner.
func smallReceiveBuffer(_, _ string, rc syscall.RawConn) error {
	var err error
	cerr := rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8192) })
	return errors.Join(cerr, err)
}
