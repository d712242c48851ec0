//go:build !linux

package ws

import (
	"errors"
	"log/slog"
)

// poller is Linux-only (epoll); elsewhere every connection has a reader
// goroutine.
type poller struct{}

func newPoller(*slog.Logger) (*poller, error) { return nil, errors.New("no epoll on this platform") }
func (*poller) add(*conn) error               { return errors.New("no poller") }
func (*poller) rearm(*conn) error             { return errors.New("no poller") }
func (*poller) remove(*conn)                  {}
