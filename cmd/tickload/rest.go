package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// REST batches: the server answers at most 1000 symbols per /v1/quotes
// request and reads at most 16 KB of headers, so a batch holds at most
// restBatch symbols and restBatchBytes of symbol list.
const (
	restBatch      = 500
	restBatchBytes = 4096
)

// restClient reads the server's REST API with one token.
type restClient struct {
	base   string // http(s)://host:port
	token  string
	client *http.Client
}

func newREST(cfg config) (*restClient, error) {
	tok := cfg.token
	if tok == "" {
		var err error
		if tok, err = mint([]byte(cfg.secret), "load-rest"); err != nil {
			return nil, err
		}
	}
	return &restClient{base: cfg.httpBase, token: tok, client: &http.Client{
		Timeout:   cfg.timeout,
		Transport: &http.Transport{MaxIdleConnsPerHost: 4}, // no proxy: the load goes to the server itself
	}}, nil
}

// get fetches path and decodes its JSON body into v.
func (r *restClient) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+r.token)
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// instruments returns the served symbols in the server's order.
func (r *restClient) instruments(ctx context.Context) ([]string, error) {
	var body struct {
		Instruments []struct {
			Symbol string `json:"symbol"`
		} `json:"instruments"`
	}
	if err := r.get(ctx, "/v1/instruments", &body); err != nil {
		return nil, fmt.Errorf("GET %s/v1/instruments: %w", r.base, err)
	}
	out := make([]string, 0, len(body.Instruments))
	for _, in := range body.Instruments {
		out = append(out, in.Symbol)
	}
	return out, nil
}

// quotes returns the current quotes of symbols, fetched in batches.
func (r *restClient) quotes(ctx context.Context, symbols []string) (map[string]*quoteDoc, error) {
	out := make(map[string]*quoteDoc, len(symbols))
	for _, batch := range batches(symbols, restBatch, restBatchBytes) {
		var body struct {
			Quotes map[string]*quoteDoc `json:"quotes"`
		}
		path := "/v1/quotes?symbols=" + url.QueryEscape(strings.Join(batch, ","))
		if err := r.get(ctx, path, &body); err != nil {
			return nil, fmt.Errorf("GET %s/v1/quotes: %w", r.base, err)
		}
		for sym, q := range body.Quotes {
			out[sym] = q
		}
	}
	return out, nil
}

// batches splits symbols into groups of at most n symbols and about
// maxBytes of comma-separated list each.
func batches(symbols []string, n, maxBytes int) [][]string {
	var out [][]string
	start, size := 0, 0
	for i, s := range symbols {
		if i > start && (i-start == n || size+len(s)+1 > maxBytes) {
			out = append(out, symbols[start:i])
			start, size = i, 0
		}
		size += len(s) + 1
	}
	if start < len(symbols) {
		out = append(out, symbols[start:])
	}
	return out
}
