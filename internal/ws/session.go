package ws

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/time/rate"

	"github.com/tickstream/tickstream/internal/auth"
	"github.com/tickstream/tickstream/internal/quote"
)

// handle answers one client message.
func (c *conn) handle(data []byte) {
	m, err := decodeClientMessage(data)
	if err == nil {
		switch m.Type {
		case "subscribe", "unsubscribe":
			err = c.changeSubscription(m)
		case "auth":
			err = c.refresh(m)
		case "ping":
			c.reply(pongMessage{Type: "pong", ID: m.ID})
		default:
			err = &protocolError{id: m.ID, code: CodeUnknownType, message: fmt.Sprintf("unknown message type %q", truncate(m.Type, 32))}
		}
	}
	var pe *protocolError
	if errors.As(err, &pe) {
		c.log().Debug("client error", "code", pe.code)
		c.reply(errorMessage{Type: "error", ID: pe.id, Code: pe.code, Message: pe.message})
	}
}

// changeSubscription handles subscribe and unsubscribe. The ack is queued
// before the writer may build the patch that adds or removes the symbols,
// so the client always reads "subscribed" first.
func (c *conn) changeSubscription(m clientMessage) error {
	if len(m.Symbols) == 0 {
		return &protocolError{id: m.ID, code: CodeBadRequest, message: `"symbols" must be a non-empty list`}
	}
	entries, invalid := Resolve(c.srv.hub.Store(), quote.Normalize(m.Symbols))
	forbidden := []string{}
	subscribe := m.Type == "subscribe"
	if subscribe {
		c.mu.Lock()
		entries, forbidden = Entitled(c.claims, entries)
		c.mu.Unlock()
		if n := c.sub.CountWith(entries); n > c.srv.cfg.MaxSymbols {
			return &protocolError{id: m.ID, code: CodeTooManySymbols,
				message: fmt.Sprintf("subscription would hold %d symbols; the limit is %d", n, c.srv.cfg.MaxSymbols)}
		}
	}
	c.hold()
	if subscribe {
		c.sub.Subscribe(entries)
	} else {
		c.sub.Unsubscribe(entries)
	}
	c.release(subscribedMessage{Type: "subscribed", ID: m.ID, Symbols: c.sub.Symbols(), Invalid: invalid, Forbidden: forbidden})
	return nil
}

// hold stops the writer from building patches while the subscription
// changes, until release queues the change's answer.
func (c *conn) hold() {
	c.mu.Lock()
	c.holds++
	c.mu.Unlock()
}

// release queues answer, ends a hold and wakes the writer.
func (c *conn) release(answer any) {
	frame := encode(answer)
	c.mu.Lock()
	if c.closing == nil {
		c.out = append(c.out, frame)
	}
	c.holds--
	c.mu.Unlock()
	c.kick()
}

// refresh puts a new token for the same user in force: the connection then
// lives until the new exp, and subscribed symbols the new token does not
// entitle are dropped. A refused token changes nothing: the old one stays
// in force until it expires.
func (c *conn) refresh(m clientMessage) error {
	cl, err := c.srv.verifier.Verify(m.Token)
	if err != nil {
		return tokenError(m.ID, err)
	}
	if cl.Subject != c.user {
		return &protocolError{id: m.ID, code: CodeSubjectMismatch, message: "the token is for another user; open a new connection for it"}
	}
	c.hold()
	c.mu.Lock()
	c.claims = cl
	c.timer.Reset(c.untilNextCheck(time.Now()))
	c.mu.Unlock()
	subscribed, _ := Resolve(c.srv.hub.Store(), c.sub.Symbols())
	_, dropped := Entitled(cl, subscribed)
	if len(dropped) > 0 {
		gone, _ := Resolve(c.srv.hub.Store(), dropped)
		c.sub.Unsubscribe(gone)
	}
	c.log().Debug("token refreshed", "expires", cl.ExpiresAt)
	c.release(authenticatedMessage{Type: "authenticated", ID: m.ID,
		ExpiresAt: cl.ExpiresAt.UTC().Format(time.RFC3339), Forbidden: dropped})
	return nil
}

// tokenError tells the client why its token was refused, in the words of
// the handshake's 401 answers; the text never quotes the token.
func tokenError(id json.RawMessage, err error) *protocolError {
	switch {
	case errors.Is(err, auth.ErrMissing):
		return &protocolError{id: id, code: CodeBadRequest, message: `"token" is missing`}
	case errors.Is(err, auth.ErrMalformed):
		return &protocolError{id: id, code: CodeMalformedToken, message: "the token is not a well-formed JWT"}
	case errors.Is(err, auth.ErrExpired):
		return &protocolError{id: id, code: CodeTokenExpired, message: "the token has expired"}
	}
	return &protocolError{id: id, code: CodeInvalidToken, message: "the token's signature, algorithm or claims are not accepted"}
}

// strikeLimit is how many messages past the rate limit, without the budget
// filling up again in between, close the connection with 4029.
const strikeLimit = 20

// admit charges one client message (or, with msg nil, one ping frame) to
// the connection's budget and reports whether to handle it. A refused
// message is answered rate_limited and not processed; a flood that goes on
// for strikeLimit refused messages is closed with 4029.
func (c *conn) admit(msg []byte) bool {
	r := c.srv.cfg.MessageRate
	if r <= 0 {
		return true
	}
	if c.limiter == nil {
		c.limiter = rate.NewLimiter(rate.Limit(r), int(math.Ceil(2*r)))
	}
	if c.limiter.Allow() {
		if c.limiter.Tokens() >= float64(c.limiter.Burst()-1) {
			c.strikes = 0 // calm again: a new flood starts from zero
		}
		return true
	}
	c.strikes++
	c.srv.m.RateLimited.Inc()
	if c.strikes >= strikeLimit {
		c.log().Info("closing: message flood", "refused", c.strikes)
		c.close(CloseTooManyMsgs, "too many messages")
		return false
	}
	if msg != nil {
		var id json.RawMessage
		if m, err := decodeClientMessage(msg); err == nil {
			id = m.ID
		}
		c.reply(errorMessage{Type: "error", ID: id, Code: CodeRateLimited,
			Message: fmt.Sprintf("more than %g messages per second (burst %d): this message was not processed", float64(c.limiter.Limit()), c.limiter.Burst())})
	}
	return false
}

// Entitled splits entries into those claims entitle and the symbols of the
// others, in order.
func Entitled(cl auth.Claims, entries []*quote.Entry) (allowed []*quote.Entry, forbidden []string) {
	forbidden = []string{}
	allowed = entries[:0:0]
	for _, e := range entries {
		if cl.Allows(e.Symbol) {
			allowed = append(allowed, e)
		} else {
			forbidden = append(forbidden, e.Symbol)
		}
	}
	return allowed, forbidden
}

// orEmpty makes a nil list an empty one, which encodes as [] not null.
func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Resolve splits normalised symbols into served entries and the rest, in
// request order.
func Resolve(store *quote.Store, symbols []string) (entries []*quote.Entry, invalid []string) {
	invalid = []string{}
	for _, s := range symbols {
		if e, ok := store.Lookup(s); ok {
			entries = append(entries, e)
		} else {
			invalid = append(invalid, s)
		}
	}
	return entries, invalid
}

// reply queues a JSON message.
func (c *conn) reply(v any) { c.enqueue(encode(v)) }

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // only fixed server types reach here
	}
	return newFrame(ws.OpText, b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
