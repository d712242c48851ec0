package ws

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// clientFrame encodes one masked client frame.
func clientFrame(t *testing.T, fin bool, op ws.OpCode, payload []byte, mutate func(*ws.Header)) []byte {
	t.Helper()
	h := ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: ws.NewMask(), Length: int64(len(payload))}
	if mutate != nil {
		mutate(&h)
	}
	p := append([]byte(nil), payload...)
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	var b bytes.Buffer
	if err := ws.WriteHeader(&b, h); err != nil {
		t.Fatal(err)
	}
	b.Write(p)
	return b.Bytes()
}

func TestReadMessage(t *testing.T) {
	text := func(s string) []byte { return []byte(s) }
	tests := []struct {
		name      string
		frames    func(t *testing.T) [][]byte
		want      string
		wantClose ws.StatusCode // 0: a message; peer codes come back as peerClosedError
		wantPeer  ws.StatusCode
		pings     int
	}{
		{name: "text", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpText, text(`{"type":"ping"}`), nil)}
		}, want: `{"type":"ping"}`},
		{name: "fragments with a ping between", frames: func(t *testing.T) [][]byte {
			return [][]byte{
				clientFrame(t, false, ws.OpText, text(`{"type"`), nil),
				clientFrame(t, true, ws.OpPing, text("hi"), nil),
				clientFrame(t, false, ws.OpContinuation, text(`:"pi`), nil),
				clientFrame(t, true, ws.OpContinuation, text(`ng"}`), nil),
			}
		}, want: `{"type":"ping"}`, pings: 1},
		{name: "empty text", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpText, nil, nil)}
		}, want: ``},
		{name: "unmasked", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpText, text("x"), func(h *ws.Header) { h.Masked = false })}
		}, wantClose: CloseProtocolError},
		{name: "reserved bit", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpText, text("x"), func(h *ws.Header) { h.Rsv = 4 })}
		}, wantClose: CloseProtocolError},
		{name: "reserved opcode", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpCode(3), text("x"), nil)}
		}, wantClose: CloseProtocolError},
		{name: "binary", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpBinary, []byte{1}, nil)}
		}, wantClose: CloseUnsupported},
		{name: "continuation first", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpContinuation, text("x"), nil)}
		}, wantClose: CloseProtocolError},
		{name: "text inside fragmented text", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, false, ws.OpText, text("x"), nil), clientFrame(t, true, ws.OpText, text("y"), nil)}
		}, wantClose: CloseProtocolError},
		{name: "too big", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpText, bytes.Repeat(text("a"), MaxMessageSize+1), nil)}
		}, wantClose: CloseTooBig},
		{name: "too big across fragments", frames: func(t *testing.T) [][]byte {
			half := bytes.Repeat(text("a"), MaxMessageSize/2+1)
			return [][]byte{clientFrame(t, false, ws.OpText, half, nil), clientFrame(t, true, ws.OpContinuation, half, nil)}
		}, wantClose: CloseTooBig},
		{name: "exactly the limit", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpText, bytes.Repeat(text("a"), MaxMessageSize), nil)}
		}, want: strings.Repeat("a", MaxMessageSize)},
		{name: "invalid UTF-8", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpText, []byte{0xc3, 0x28}, nil)}
		}, wantClose: CloseInvalidPayload},
		{name: "long control frame", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpPing, bytes.Repeat(text("a"), 126), nil)}
		}, wantClose: CloseProtocolError},
		{name: "fragmented control frame", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, false, ws.OpPing, nil, nil)}
		}, wantClose: CloseProtocolError},
		{name: "close 1000", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpClose, ws.NewCloseFrameBody(1000, "bye"), nil)}
		}, wantPeer: 1000},
		{name: "close without body", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpClose, nil, nil)}
		}, wantPeer: 1000},
		{name: "close 4001", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpClose, ws.NewCloseFrameBody(4001, ""), nil)}
		}, wantPeer: 4001},
		{name: "close with one byte", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpClose, []byte{3}, nil)}
		}, wantClose: CloseProtocolError},
		{name: "close with reserved code 1005", frames: func(t *testing.T) [][]byte {
			return [][]byte{clientFrame(t, true, ws.OpClose, ws.NewCloseFrameBody(1005, ""), nil)}
		}, wantClose: CloseProtocolError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pings := 0
			fr := frameReader{
				r:       bytes.NewReader(bytes.Join(tt.frames(t), nil)),
				onPing:  func([]byte) { pings++ },
				onPong:  func() {},
				onFrame: func() {},
			}
			got, err := fr.readMessage()
			var ce *closeError
			var pc *peerClosedError
			switch {
			case tt.wantClose != 0:
				if !errors.As(err, &ce) || ce.code != tt.wantClose {
					t.Fatalf("got %v, want close %d", err, tt.wantClose)
				}
			case tt.wantPeer != 0:
				if !errors.As(err, &pc) || pc.code != tt.wantPeer {
					t.Fatalf("got %v, want peer close %d", err, tt.wantPeer)
				}
			case err != nil:
				t.Fatalf("got error %v, want %q", err, tt.want)
			case string(got) != tt.want:
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if pings != tt.pings {
				t.Errorf("pings: got %d, want %d", pings, tt.pings)
			}
		})
	}
}

// TestSealFrame checks server frames of every header size against
// gobwas/ws's reader.
func TestSealFrame(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 200000} {
		payload := bytes.Repeat([]byte("x"), n)
		frame := newFrame(ws.OpText, payload)
		f, err := ws.ReadFrame(bytes.NewReader(frame))
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !f.Header.Fin || f.Header.OpCode != ws.OpText || f.Header.Masked || !bytes.Equal(f.Payload, payload) {
			t.Errorf("%d bytes: got header %+v and %d payload bytes", n, f.Header, len(f.Payload))
		}
		if want := headerLen(n) + n; len(frame) != want {
			t.Errorf("%d bytes: frame is %d bytes, want %d", n, len(frame), want)
		}
	}
}

func TestDecodeClientMessage(t *testing.T) {
	tests := []struct {
		in       string
		wantType string
		wantCode string
		wantID   string
	}{
		{`{"type":"subscribe","id":"a","symbols":["X"]}`, "subscribe", "", `"a"`},
		{`{"type":"ping","id":12.5,"extra":true}`, "ping", "", `12.5`},
		{`{"type":"ping","id":null}`, "ping", "", ``},
		{`{"type":"ping","id":[1]}`, "", CodeBadRequest, ``},
		{`{"type":"ping","id":"` + strings.Repeat("i", 70) + `"}`, "", CodeBadRequest, ``},
		{`{"id":"a"}`, "", CodeBadRequest, `"a"`},
		{`[1,2]`, "", CodeBadJSON, ``},
		{`{"type":1}`, "", CodeBadJSON, ``},
		{`{"type":"subscribe","symbols":"X"}`, "", CodeBadJSON, ``},
		{``, "", CodeBadJSON, ``},
	}
	for _, tt := range tests {
		m, err := decodeClientMessage([]byte(tt.in))
		var pe *protocolError
		switch {
		case tt.wantCode == "":
			if err != nil || m.Type != tt.wantType || string(m.ID) != tt.wantID {
				t.Errorf("%s: got %+v %v, want type %s id %s", tt.in, m, err, tt.wantType, tt.wantID)
			}
		case !errors.As(err, &pe) || pe.code != tt.wantCode || string(pe.id) != tt.wantID:
			t.Errorf("%s: got %v, want code %s id %q", tt.in, err, tt.wantCode, tt.wantID)
		case strings.Contains(pe.message, "ws.") || strings.Contains(pe.message, "clientMessage"):
			t.Errorf("%s: message %q names a Go type", tt.in, pe.message)
		}
	}
}
