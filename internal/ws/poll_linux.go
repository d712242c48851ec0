package ws

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller watches idle connections with one epoll set, so that no goroutine
// (2 KB of stack or more each) waits on a connection with nothing to say.
// A connection is registered one-shot: when data arrives, one goroutine
// reads it (conn.readReady) and re-arms the connection, so reads of one
// connection never overlap. Go's own netpoller still does the reading.
type poller struct {
	epfd int
	log  *slog.Logger

	mu    sync.Mutex // guards conns
	conns map[uint64]*conn
}

func newPoller(log *slog.Logger) (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	p := &poller{epfd: fd, log: log, conns: make(map[uint64]*conn)}
	go p.run()
	return p, nil
}

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func (p *poller) add(c *conn) error {
	p.mu.Lock()
	p.conns[c.id] = c
	p.mu.Unlock()
	if err := p.ctl(c, unix.EPOLL_CTL_ADD); err != nil {
		p.mu.Lock()
		delete(p.conns, c.id)
		p.mu.Unlock()
		return err
	}
	return nil
}

// rearm asks for the next event of a connection whose reader is done.
func (p *poller) rearm(c *conn) error { return p.ctl(c, unix.EPOLL_CTL_MOD) }

func (p *poller) remove(c *conn) {
	p.mu.Lock()
	delete(p.conns, c.id)
	p.mu.Unlock()
	p.ctl(c, unix.EPOLL_CTL_DEL) // fails harmlessly once the socket is closed
}

func (p *poller) ctl(c *conn, op int) error {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return errors.New("connection has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	ev := unix.EpollEvent{Events: pollEvents, Fd: int32(c.id), Pad: int32(c.id >> 32)}
	var cerr error
	err = rc.Control(func(fd uintptr) { cerr = unix.EpollCtl(p.epfd, op, int(fd), &ev) })
	return errors.Join(err, cerr)
}

// run dispatches events until the process ends; the epoll set lives as
// long as the server.
func (p *poller) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.log.Error("epoll_wait failed; connections can no longer be read", "err", err)
			return
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if c := p.conns[uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32]; c != nil {
				go c.readReady()
			}
		}
		p.mu.Unlock()
	}
}

// tryWritev writes frames with one non-blocking writev. It reports how much
// was written and whether that was all; a full socket is not an error.
// Connections without a file descriptor (TLS) write nothing here.
func tryWritev(nc net.Conn, frames [][]byte) (n int64, done bool, err error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0, false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false, err
	}
	total := 0
	for _, f := range frames {
		total += len(f)
	}
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		var k int
		k, werr = unix.Writev(int(fd), frames)
		n = int64(max(k, 0))
		return true // never wait: a full socket goes to a blocking writer
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, false, nil // nothing was tried: the blocking writer takes over
	case err != nil:
		return n, false, err
	case werr == unix.EAGAIN || werr == unix.EINTR:
		return n, false, nil
	case werr != nil:
		return n, false, werr
	}
	return n, int(n) == total, nil
}
