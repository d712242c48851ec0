package ws

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// maxHeaderLen is the longest header of a server frame (unmasked, 64-bit
// length). Message buffers reserve it in front of the payload so the header
// can be written in place once the payload length is known.
const maxHeaderLen = 10

// headerLen is the header size of an unmasked frame carrying n bytes.
func headerLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xFFFF:
		return 4
	}
	return 10
}

// rsv1 marks a compressed message (RFC 7692).
const rsv1 = 0x40

// putHeader writes a final, unmasked frame header for an n-byte payload into
// dst, which must be exactly headerLen(n) long. flags is 0 or rsv1.
func putHeader(dst []byte, op ws.OpCode, flags byte, n int) {
	dst[0] = 0x80 | flags | byte(op)
	switch len(dst) {
	case 2:
		dst[1] = byte(n)
	case 4:
		dst[1] = 126
		binary.BigEndian.PutUint16(dst[2:], uint16(n))
	default:
		dst[1] = 127
		binary.BigEndian.PutUint64(dst[2:], uint64(n))
	}
}

// sealFrame turns buf, which holds maxHeaderLen reserved bytes followed by
// a payload, into one frame and returns it (a sub-slice of buf).
func sealFrame(buf []byte, op ws.OpCode, flags byte) []byte {
	n := len(buf) - maxHeaderLen
	start := maxHeaderLen - headerLen(n)
	putHeader(buf[start:maxHeaderLen], op, flags, n)
	return buf[start:]
}

// newFrame returns a frame holding payload.
func newFrame(op ws.OpCode, payload []byte) []byte {
	b := make([]byte, maxHeaderLen, maxHeaderLen+len(payload))
	return sealFrame(append(b, payload...), op, 0)
}

// closeFrame returns a close frame with code and reason.
func closeFrame(code ws.StatusCode, reason string) []byte {
	return newFrame(ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

// closeError is a reason to close the connection with a code.
type closeError struct {
	code   ws.StatusCode
	reason string
}

func (e *closeError) Error() string { return fmt.Sprintf("close %d: %s", e.code, e.reason) }

func closeWith(code ws.StatusCode, reason string) error { return &closeError{code, reason} }

// errPeerClosed means the client sent a close frame; peerCode is its code.
type peerClosedError struct{ code ws.StatusCode }

func (e *peerClosedError) Error() string { return fmt.Sprintf("peer closed with %d", e.code) }

// frameReader reads client frames straight from the connection: it holds no
// buffer between messages, so an idle connection costs no read buffer.
type frameReader struct {
	r        io.Reader
	compress bool // permessage-deflate was negotiated: RSV1 may mark a message
	onPing   func(payload []byte)
	onPong   func()
	onFrame  func() // any frame arrived (for the idle timer)
}

// readMessage returns the next complete text message, answering control
// frames on the way; after a control frame outside a fragmented message it
// returns nil. Every protocol violation comes back as a *closeError.
func (fr *frameReader) readMessage() ([]byte, error) {
	var msg []byte
	started, compressed := false, false
	for {
		h, err := ws.ReadHeader(fr.r)
		if err != nil {
			if errors.Is(err, ws.ErrHeaderLengthMSB) || errors.Is(err, ws.ErrHeaderLengthUnexpected) {
				return nil, closeWith(CloseProtocolError, "bad frame header")
			}
			return nil, err
		}
		fr.onFrame()
		if fr.compress && h.Rsv == rsv1>>4 && !started && (h.OpCode == ws.OpText || h.OpCode == ws.OpBinary) {
			compressed = true
			h.Rsv = 0
		}
		if err := checkHeader(h); err != nil {
			return nil, err
		}
		if h.OpCode.IsControl() {
			if err := fr.control(h); err != nil {
				return nil, err
			}
			if !started {
				return nil, nil // let the caller wait for more without holding a goroutine
			}
			continue
		}
		switch {
		case h.OpCode == ws.OpBinary:
			return nil, closeWith(CloseUnsupported, "binary messages are not supported")
		case h.OpCode == ws.OpText && started, h.OpCode == ws.OpContinuation && !started:
			return nil, closeWith(CloseProtocolError, "unexpected frame in fragmented message")
		case int64(len(msg))+h.Length > MaxMessageSize:
			return nil, closeWith(CloseTooBig, fmt.Sprintf("message larger than %d bytes", MaxMessageSize))
		}
		started = true
		if msg, err = fr.appendPayload(msg, h); err != nil {
			return nil, err
		}
		if h.Fin {
			if compressed {
				if msg, err = inflate(msg, MaxMessageSize); errors.Is(err, errInflatedTooBig) {
					return nil, closeWith(CloseTooBig, fmt.Sprintf("message larger than %d bytes", MaxMessageSize))
				} else if err != nil {
					return nil, closeWith(CloseInvalidPayload, "message does not inflate")
				}
			}
			if !utf8.Valid(msg) {
				return nil, closeWith(CloseInvalidPayload, "text message is not valid UTF-8")
			}
			return msg, nil
		}
	}
}

// buffered reports whether bytes that came with the handshake are still
// unread (the poller cannot see them).
func (fr *frameReader) buffered() bool {
	sr, ok := fr.r.(*socketReader)
	return ok && len(sr.early) > 0
}

func checkHeader(h ws.Header) error {
	switch {
	case h.Rsv != 0:
		return closeWith(CloseProtocolError, "reserved bits set")
	case !h.Masked:
		return closeWith(CloseProtocolError, "client frames must be masked")
	case h.OpCode.IsReserved():
		return closeWith(CloseProtocolError, "reserved opcode")
	case h.OpCode.IsControl() && (!h.Fin || h.Length > 125):
		return closeWith(CloseProtocolError, "bad control frame")
	}
	return nil
}

func (fr *frameReader) control(h ws.Header) error {
	p, err := fr.appendPayload(nil, h)
	if err != nil {
		return err
	}
	switch h.OpCode {
	case ws.OpPing:
		fr.onPing(p)
	case ws.OpPong:
		fr.onPong()
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(p)
		switch {
		case len(p) == 1:
			return closeWith(CloseProtocolError, "bad close frame")
		case len(p) == 0:
			code = CloseNormal
		case !utf8.ValidString(reason) || !code.IsProtocolDefined() && !code.IsApplicationSpec() && !code.IsPrivateSpec() || code.IsNotUsed() || code.IsProtocolReserved():
			return closeWith(CloseProtocolError, "bad close frame")
		}
		return &peerClosedError{code}
	}
	return nil
}

func (fr *frameReader) appendPayload(b []byte, h ws.Header) ([]byte, error) {
	n := len(b)
	b = append(b, make([]byte, h.Length)...)
	if _, err := io.ReadFull(fr.r, b[n:]); err != nil {
		return nil, err
	}
	ws.Cipher(b[n:], h.Mask, 0)
	return b, nil
}
