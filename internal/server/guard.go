package server

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Request size limits, checked before anything else reads the request.
// http.Server.MaxHeaderBytes (maxHeaderBytesHard) is the backstop beyond
// which Go answers 431 itself, without a JSON body.
const (
	maxURLBytes        = 8 << 10
	maxHeaderBytes     = 16 << 10
	maxHeaderBytesHard = 64 << 10
)

// MaxHeaderBytes is the value for http.Server.MaxHeaderBytes: above
// maxHeaderBytes, so that requests up to it reach checkSize and get a JSON
// answer.
const MaxHeaderBytes = maxHeaderBytesHard

// checkSize refuses a request line or header block over the limits.
func checkSize(r *http.Request) error {
	if len(r.RequestURI) > maxURLBytes {
		return reject(http.StatusRequestURITooLong, codeURITooLong,
			fmt.Sprintf("the URL has %d bytes; the limit is %d", len(r.RequestURI), maxURLBytes))
	}
	n := 0
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4 // ": " and CRLF
		}
	}
	if n > maxHeaderBytes {
		return reject(http.StatusRequestHeaderFieldsTooLarge, codeHeadersTooLarge,
			fmt.Sprintf("the headers have %d bytes; the limit is %d", n, maxHeaderBytes))
	}
	return nil
}

// checkOrigin refuses a browser handshake from a page of another site
// (cross-site WebSocket hijacking: the browser would send the user's
// cookies and the page would read the stream). A request without Origin
// is not from a browser page and is allowed. With no allowed list, only
// the server's own host is allowed; "*" allows any.
func checkOrigin(r *http.Request, allowed []string) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	origin = strings.ToLower(origin)
	if len(allowed) == 0 {
		if u, err := url.Parse(origin); err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host) {
			return nil
		}
	} else if slices.Contains(allowed, "*") || slices.Contains(allowed, origin) {
		return nil
	}
	return reject(http.StatusForbidden, codeForbiddenOrigin, "this Origin may not open WebSockets here; see ALLOWED_ORIGINS")
}

// clientIP is the address per-IP limits count against: the peer, or, when
// the peer is a trusted proxy, the right-most address of X-Forwarded-For
// that is not a trusted proxy (the left part is the client's to forge).
// IPv6 clients count by /64, the block one subscriber usually holds.
func clientIP(r *http.Request, trusted []netip.Prefix) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	ip = ip.Unmap()
	if isTrusted(ip, trusted) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break
			}
			ip = hop.Unmap()
			if !isTrusted(ip, trusted) {
				break
			}
		}
	}
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

func isTrusted(ip netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// ipLimiter is a token bucket per client IP. Buckets that have filled up
// again are dropped, so memory follows the number of recently active IPs,
// and a flood of new IPs is capped at maxIPs buckets.
type ipLimiter struct {
	every rate.Limit
	burst int

	mu        sync.Mutex
	buckets   map[netip.Addr]*rate.Limiter
	lastSweep time.Time
}

// maxIPs bounds the buckets held at once; past it, handshakes from IPs
// without a bucket are refused until a sweep frees some.
const maxIPs = 100_000

func newIPLimiter(perSecond float64) *ipLimiter {
	return &ipLimiter{every: rate.Limit(perSecond), burst: int(math.Ceil(2 * perSecond)),
		buckets: make(map[netip.Addr]*rate.Limiter)}
}

// wait charges one handshake to ip and returns 0 when it may go on, or how
// long until it could.
func (l *ipLimiter) wait(ip netip.Addr) time.Duration {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b := l.buckets[ip]
	if b == nil {
		if len(l.buckets) >= maxIPs {
			return time.Second
		}
		b = rate.NewLimiter(l.every, l.burst)
		l.buckets[ip] = b
	}
	res := b.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d
	}
	return 0
}

// sweep drops full buckets, at most once per refill time; l.mu is held.
func (l *ipLimiter) sweep(now time.Time) {
	refill := time.Duration(float64(l.burst) / float64(l.every) * float64(time.Second))
	if now.Sub(l.lastSweep) < max(refill, time.Second) {
		return
	}
	l.lastSweep = now
	for ip, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, ip)
		}
	}
}

// tooFast is the 429 of a client over its handshake rate.
func tooFast(d time.Duration) *apiError {
	n := retrySeconds(d)
	return reject(http.StatusTooManyRequests, codeRateLimited,
		fmt.Sprintf("too many connection attempts from this address; retry in %d s", n)).after(n)
}

// retrySeconds rounds d up to whole seconds, at least 1, for Retry-After.
func retrySeconds(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }
