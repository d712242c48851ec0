package ws

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/gobwas/ws"

	"github.com/tickstream/tickstream/internal/quote"
)

// handle answers one client message.
func (c *conn) handle(data []byte) {
	m, err := decodeClientMessage(data)
	if err == nil {
		switch m.Type {
		case "subscribe", "unsubscribe":
			err = c.changeSubscription(m)
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
	subscribe := m.Type == "subscribe"
	if subscribe {
		if n := c.sub.CountWith(entries); n > c.srv.cfg.MaxSymbols {
			return &protocolError{id: m.ID, code: CodeTooManySymbols,
				message: fmt.Sprintf("subscription would hold %d symbols; the limit is %d", n, c.srv.cfg.MaxSymbols)}
		}
	}
	c.mu.Lock()
	c.holds++
	c.mu.Unlock()
	if subscribe {
		c.sub.Subscribe(entries)
	} else {
		c.sub.Unsubscribe(entries)
	}
	ack := encode(subscribedMessage{Type: "subscribed", ID: m.ID, Symbols: c.sub.Symbols(), Invalid: invalid})
	c.mu.Lock()
	if c.closing == nil {
		c.out = append(c.out, ack)
	}
	c.holds--
	c.mu.Unlock()
	c.kick()
	return nil
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
