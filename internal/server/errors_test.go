package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/tickstream/tickstream/internal/auth"
	"github.com/tickstream/tickstream/internal/ws"
)

// TestWriteError checks the one place that maps errors to what a client is
// told: status, code, JSON body and headers.
func TestWriteError(t *testing.T) {
	tests := []struct {
		err        error
		status     int
		code       string
		retryAfter bool
	}{
		{auth.ErrMissing, 401, codeMissingToken, false},
		{auth.ErrMalformed, 401, codeMalformedToken, false},
		{fmt.Errorf("verify: %w", auth.ErrExpired), 401, codeTokenExpired, false},
		{fmt.Errorf("%w: sub is required", auth.ErrInvalid), 401, codeInvalidToken, false},
		{ws.ErrFull, 503, codeServerFull, true},
		{ws.ErrDraining, 503, codeShuttingDown, true},
		{badRequest(codeNoValidSymbols, "none"), 400, codeNoValidSymbols, false},
		{errors.New("database on fire"), 500, "internal", false},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeError(rec, tt.err)
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if rec.Code != tt.status || body.Error.Code != tt.code || body.Error.Message == "" {
				t.Errorf("got %d %q %q, want %d %q and a message", rec.Code, body.Error.Code, body.Error.Message, tt.status, tt.code)
			}
			if got := rec.Header().Get("Retry-After") != ""; got != tt.retryAfter {
				t.Errorf("Retry-After present: got %v, want %v", got, tt.retryAfter)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type: got %q", ct)
			}
			if tt.status == 500 && body.Error.Message != "internal error" {
				t.Errorf("internal error leaks %q", body.Error.Message)
			}
		})
	}
}
