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
	// Issue 5: security.
	codeForbiddenOrigin  = "forbidden_origin"
	codeForbiddenSymbols = "forbidden_symbols"
	codeRateLimited      = "rate_limited"
	codeUserLimit        = "too_many_connections"
	codeURITooLong       = "uri_too_long"
	codeHeadersTooLarge  = "headers_too_large"
)

// retryAfter is the Retry-After, in seconds, of every 503 and of the 429
// for too many connections of one user.
const retryAfter = 5

// apiError is a rejection: an HTTP status with a machine-readable code, and
// for some a Retry-After in seconds.
type apiError struct {
	status  int
	code    string
	message string
	retry   int
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

// reject makes an apiError.
func reject(status int, code, message string) *apiError {
	return &apiError{status: status, code: code, message: message}
}

// after sets the Retry-After seconds.
func (e *apiError) after(seconds int) *apiError {
	e.retry = seconds
	return e
}

func badRequest(code, message string) *apiError {
	return reject(http.StatusBadRequest, code, message)
}

// toAPIError maps every error a handler can meet onto its status and code:
// the one place that decides what a client is told.
func toAPIError(err error) *apiError {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, auth.ErrMissing):
		return reject(http.StatusUnauthorized, codeMissingToken, "a token is required: Authorization: Bearer <JWT>, or ?token=<JWT>")
	case errors.Is(err, auth.ErrMalformed):
		return reject(http.StatusUnauthorized, codeMalformedToken, "the token is not a well-formed JWT, or the Authorization header is not Bearer")
	case errors.Is(err, auth.ErrExpired):
		return reject(http.StatusUnauthorized, codeTokenExpired, "the token has expired")
	case errors.Is(err, auth.ErrInvalid):
		return reject(http.StatusUnauthorized, codeInvalidToken, "the token's signature, algorithm or claims are not accepted")
	case errors.Is(err, ws.ErrFull):
		return reject(http.StatusServiceUnavailable, codeServerFull, "the server holds its maximum number of connections; retry later").after(retryAfter)
	case errors.Is(err, ws.ErrDraining):
		return reject(http.StatusServiceUnavailable, codeShuttingDown, "the server is shutting down; retry on another instance or later").after(retryAfter)
	case errors.Is(err, ws.ErrUserLimit):
		return reject(http.StatusTooManyRequests, codeUserLimit, "this user holds the maximum number of connections on this server (USER_MAX_CONNECTIONS); close one first").after(retryAfter)
	}
	return reject(http.StatusInternalServerError, "internal", "internal error")
}

// writeError answers with err's status and the JSON body
// {"error":{"code":"...","message":"..."}}.
func writeError(w http.ResponseWriter, err error) *apiError {
	ae := toAPIError(err)
	if ae.retry > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.retry))
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
