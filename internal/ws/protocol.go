package ws

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/gobwas/ws"
)

// Close codes the server sends. docs/protocol.md lists them with what a
// client should do.
const (
	CloseNormal         ws.StatusCode = 1000
	CloseGoingAway      ws.StatusCode = 1001 // server shutting down
	CloseProtocolError  ws.StatusCode = 1002 // RFC 6455 framing violated
	CloseUnsupported    ws.StatusCode = 1003 // binary frame
	CloseInvalidPayload ws.StatusCode = 1007 // text that is not UTF-8
	ClosePolicy         ws.StatusCode = 1008 // idle timeout, missed pong
	CloseTooBig         ws.StatusCode = 1009 // message over MaxMessageSize
	CloseInternal       ws.StatusCode = 1011
	CloseTryAgainLater  ws.StatusCode = 1013 // overloaded
	CloseTokenExpired   ws.StatusCode = 4001
	CloseSlowConsumer   ws.StatusCode = 4008
	CloseTooManyMsgs    ws.StatusCode = 4029
)

// MaxMessageSize is the largest client message, after reassembly of
// fragments, that the server reads.
const MaxMessageSize = 4096

// Error codes of {"type":"error"} messages.
const (
	CodeBadJSON        = "bad_json"
	CodeUnknownType    = "unknown_type"
	CodeBadRequest     = "bad_request"
	CodeTooManySymbols = "too_many_symbols"
	CodeRateLimited    = "rate_limited"
	// Codes of a refused token: the same as the handshake's 401 bodies,
	// plus subject_mismatch for a refresh naming another user.
	CodeMalformedToken  = "malformed_token"
	CodeInvalidToken    = "invalid_token"
	CodeTokenExpired    = "token_expired"
	CodeSubjectMismatch = "subject_mismatch"
)

// clientMessage is every field any client message may carry; unknown fields
// are ignored so that newer clients keep working.
type clientMessage struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id,omitempty"`
	Symbols []string        `json:"symbols"`
	Token   string          `json:"token"` // auth only
}

// protocolError is a client mistake answered with an error message; the
// connection stays open.
type protocolError struct {
	id      json.RawMessage
	code    string
	message string
}

func (e *protocolError) Error() string { return e.code + ": " + e.message }

// decodeClientMessage parses one text message. The id, when present, must be
// a string or a number of at most 64 bytes so that echoing it back is safe.
func decodeClientMessage(data []byte) (clientMessage, error) {
	var m clientMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return m, &protocolError{code: CodeBadJSON, message: "message is not a JSON object of the documented shape: " + jsonErrorText(err)}
	}
	if string(m.ID) == "null" {
		m.ID = nil
	}
	if len(m.ID) > 0 && !validID(m.ID) {
		id := m.ID
		m.ID = nil
		return m, &protocolError{code: CodeBadRequest, message: fmt.Sprintf("id must be a string or number of at most 64 bytes, got %d bytes", len(id))}
	}
	if m.Type == "" {
		return m, &protocolError{id: m.ID, code: CodeBadRequest, message: `"type" is missing`}
	}
	return m, nil
}

func validID(raw json.RawMessage) bool {
	if len(raw) > 64 {
		return false
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return false
	}
	switch v.(type) {
	case string, float64:
		return true
	}
	return false
}

// jsonErrorText describes a decoding error without quoting the input.
func jsonErrorText(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at byte %d", syn.Offset)
	case errors.As(err, &typ) && typ.Field == "":
		return "the message must be a JSON object"
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be %s", typ.Field, typ.Type)
	}
	return "invalid JSON"
}

// Server messages other than quotes_patch, encoded with encoding/json: they
// are rare and never on the fan-out path.
type (
	subscribedMessage struct {
		Type      string          `json:"type"`
		ID        json.RawMessage `json:"id,omitempty"`
		Symbols   []string        `json:"symbols"`
		Invalid   []string        `json:"invalid"`
		Forbidden []string        `json:"forbidden_symbols"`
	}
	authenticatedMessage struct {
		Type      string          `json:"type"`
		ID        json.RawMessage `json:"id,omitempty"`
		ExpiresAt string          `json:"expires_at"` // RFC 3339 UTC
		// Forbidden lists subscribed symbols the new token does not
		// entitle: they are removed from the document next.
		Forbidden []string `json:"forbidden_symbols"`
	}
	errorMessage struct {
		Type    string          `json:"type"`
		ID      json.RawMessage `json:"id,omitempty"`
		Code    string          `json:"code"`
		Message string          `json:"message"`
	}
	pongMessage struct {
		Type string          `json:"type"`
		ID   json.RawMessage `json:"id,omitempty"`
	}
)
