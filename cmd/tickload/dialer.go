package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
)

// tokenTTL is the lifetime of minted tokens: longer than any run.
const tokenTTL = 24 * time.Hour

// readLimit is the largest message a connection accepts; a snapshot of
// hundreds of symbols fits.
const readLimit = 1 << 20

// dialer opens WebSocket connections: it mints a token per connection,
// spreads the sockets over the source addresses, and counts the bytes each
// socket reads.
type dialer struct {
	url      string // ws(s)://host:port/ws/quotes
	token    string // used as is when set
	secret   []byte // otherwise tokens are minted with it
	client   *http.Client
	compress websocket.CompressionMode
	timeout  time.Duration
}

// wireKey is the context key under which a dial passes the counter its
// socket adds the bytes it reads to.
type wireKey struct{}

func newDialer(cfg config) *dialer {
	d := &dialer{url: cfg.wsURL, token: cfg.token, secret: []byte(cfg.secret), timeout: cfg.timeout}
	if cfg.compress {
		// Context takeover, as browsers do: the server compresses each
		// quote against the previous one. It costs the client a 32 KB
		// window per connection.
		d.compress = websocket.CompressionContextTakeover
	}
	d.client = &http.Client{Transport: newTransport(cfg.sourceIPs, cfg.timeout)}
	return d
}

// newTransport returns the transport of the handshakes. Each handshake has
// its own socket (no keep-alive; upgraded sockets are never pooled anyway),
// from the next source address in turn: one address has only ~28,000
// ephemeral ports towards one server address. Small buffers, because the
// transport's reader stays under the WebSocket's own for the life of the
// connection and large reads bypass it.
func newTransport(sources []netip.Addr, timeout time.Duration) *http.Transport {
	dialers := []*net.Dialer{{Timeout: timeout}}
	if len(sources) > 0 {
		dialers = dialers[:0]
		for _, ip := range sources {
			dialers = append(dialers, &net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: ip.AsSlice()}})
		}
	}
	var next atomic.Uint64
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := dialers[(next.Add(1)-1)%uint64(len(dialers))]
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if n, ok := ctx.Value(wireKey{}).(*atomic.Int64); ok {
				return &countingConn{Conn: c, n: n}, nil
			}
			return c, nil
		},
		DisableKeepAlives:   true,
		TLSHandshakeTimeout: timeout,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
		ReadBufferSize:      1024,
		WriteBufferSize:     1024,
	}
}

// countingConn adds the bytes read from the socket, handshake, frame
// headers and compressed payloads included, to n: the bandwidth figure.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	k, err := c.Conn.Read(p)
	c.n.Add(int64(k))
	return k, err
}

// handshakeError is a failed dial or handshake, with the reason it is
// counted under: the HTTP status, "timeout" or "dial".
type handshakeError struct {
	reason string
	err    error
}

func (e *handshakeError) Error() string { return e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// dial opens connection id to symbols; the socket counts its bytes into
// wire.
func (d *dialer) dial(ctx context.Context, id int, symbols []string, wire *atomic.Int64) (*websocket.Conn, error) {
	tok, err := d.tokenFor(fmt.Sprintf("load-%d", id))
	if err != nil {
		return nil, &handshakeError{reason: "token", err: err}
	}
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, wireKey{}, wire), d.timeout)
	defer cancel()
	u := d.url + "?symbols=" + url.QueryEscape(strings.Join(symbols, ","))
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient:      d.client,
		HTTPHeader:      http.Header{"Authorization": {"Bearer " + tok}},
		CompressionMode: d.compress,
	})
	if err != nil {
		return nil, classify(ctx, resp, err)
	}
	c.SetReadLimit(readLimit)
	return c, nil
}

// classify names why a handshake failed; the error carries the response
// body, which says why in the server's words.
func classify(ctx context.Context, resp *http.Response, err error) error {
	if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return &handshakeError{
			reason: strconv.Itoa(resp.StatusCode),
			err:    fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(body))),
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return &handshakeError{reason: "timeout", err: err}
	}
	return &handshakeError{reason: "dial", err: err}
}

// tokenFor returns the -token, or a token minted for subject.
func (d *dialer) tokenFor(subject string) (string, error) {
	if d.token != "" {
		return d.token, nil
	}
	return mint(d.secret, subject)
}

func mint(secret []byte, subject string) (string, error) {
	claims := jwt.MapClaims{"sub": subject, "exp": time.Now().Add(tokenTTL).Unix()}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return tok, nil
}
