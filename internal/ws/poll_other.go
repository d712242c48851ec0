//go:build !linux

package ws

import (
	"errors"
	"log/slog"
	"net"
)

// poller is Linux-only (epoll); elsewhere every connection has a reader
// goroutine.
type poller struct{}

func newPoller(*slog.Logger) (*poller, error) { return nil, errors.New("no epoll on this platform") }
func (*poller) add(*conn) error               { return errors.New("no poller") }
func (*poller) rearm(*conn) error             { return errors.New("no poller") }
func (*poller) remove(*conn)                  {}

// tryWritev writes nothing: every write goes to a blocking writer.
func tryWritev(net.Conn, [][]byte) (int64, bool, error) { return 0, false, nil }
