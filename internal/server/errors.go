package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/tickstream/tickstream/internal/auth"
	"github.com/tickstream/tickstream/internal/ws"
)

// Error codes of HTTP error bodies. docs/protocol.md lists them.
const (
	codeMissingToken   = "missing_token"
	codeMalformedToken = "malformed_token"
	codeInvalidToken   = "invalid_token"
	codeTokenExpired   = "token_expired"
	codeNotWebSocket   = "not_websocket"
	codeNoValidSymbols = "no_valid_symbols"
	codeTooMany        = "too_many_symbols"
	codeServerFull     = "server_full"
	codeShuttingDown   = "shutting_down"
	codeNotFound       = "not_found"
	codeMethod         = "method_not_allowed"
)

// retryAfter is the Retry-After, in seconds, of every 503.
const retryAfter = 5

// apiError is a rejection: an HTTP status with a machine-readable code.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func badRequest(code, message string) *apiError {
	return &apiError{http.StatusBadRequest, code, message}
}

// toAPIError maps every error a handler can meet onto its status and code:
// the one place that decides what a client is told.
func toAPIError(err error) *apiError {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, auth.ErrMissing):
		return &apiError{http.StatusUnauthorized, codeMissingToken, "a token is required: Authorization: Bearer <JWT>, or ?token=<JWT>"}
	case errors.Is(err, auth.ErrMalformed):
		return &apiError{http.StatusUnauthorized, codeMalformedToken, "the token is not a well-formed JWT, or the Authorization header is not Bearer"}
	case errors.Is(err, auth.ErrExpired):
		return &apiError{http.StatusUnauthorized, codeTokenExpired, "the token has expired"}
	case errors.Is(err, auth.ErrInvalid):
		return &apiError{http.StatusUnauthorized, codeInvalidToken, "the token's signature, algorithm or claims are not accepted"}
	case errors.Is(err, ws.ErrFull):
		return &apiError{http.StatusServiceUnavailable, codeServerFull, "the server holds its maximum number of connections; retry later"}
	case errors.Is(err, ws.ErrDraining):
		return &apiError{http.StatusServiceUnavailable, codeShuttingDown, "the server is shutting down; retry on another instance or later"}
	}
	return &apiError{http.StatusInternalServerError, "internal", "internal error"}
}

// writeError answers with err's status and the JSON body
// {"error":{"code":"...","message":"..."}}.
func writeError(w http.ResponseWriter, err error) *apiError {
	ae := toAPIError(err)
	if ae.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	if ae.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tickstream"`)
	}
	writeJSON(w, ae.status, map[string]any{"error": map[string]string{"code": ae.code, "message": ae.message}})
	return ae
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	writeBody(w, status, b)
}

func writeBody(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b)
	w.Write([]byte{'\n'})
}
