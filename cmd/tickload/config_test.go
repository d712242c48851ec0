package main

import (
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseSourceIPs(t *testing.T) {
	addrs := func(list ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range list {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	tests := []struct {
		in   string
		want []netip.Addr
	}{
		{"", nil},
		{"127.0.0.1", addrs("127.0.0.1")},
		{"127.0.0.1-127.0.0.4", addrs("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")},
		{"10.0.0.255-10.0.1.1", addrs("10.0.0.255", "10.0.1.0", "10.0.1.1")},
		{"127.0.0.1, 127.0.0.5-127.0.0.6", addrs("127.0.0.1", "127.0.0.5", "127.0.0.6")},
		{"::1", addrs("::1")},
		{"fd00::1-fd00::2", addrs("fd00::1", "fd00::2")},
	}
	for _, tt := range tests {
		got, err := parseSourceIPs(tt.in)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("parseSourceIPs(%q): got %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseSourceIPsErrors(t *testing.T) {
	for _, in := range []string{
		"localhost",
		"127.0.0.1-",
		"127.0.0.5-127.0.0.1",
		"127.0.0.1-::1",
		"127.0.0.1,127.0.0.1",
		"10.0.0.0-10.1.0.0", // more than maxSourceIPs
		"127.0.0.1,,127.0.0.2",
	} {
		if got, err := parseSourceIPs(in); err == nil {
			t.Errorf("parseSourceIPs(%q): got %v, want an error", in, got)
		}
	}
}

func TestParseConfig(t *testing.T) {
	env := func(string) string { return "" }
	c, err := parseConfig([]string{"-secret", "s", "-url", "wss://example.com:8443/", "-source-ips", "127.0.0.1-127.0.0.2"}, env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.wsURL, "wss://example.com:8443/ws/quotes"; got != want {
		t.Errorf("wsURL: got %q, want %q", got, want)
	}
	if got, want := c.httpBase, "https://example.com:8443"; got != want {
		t.Errorf("httpBase: got %q, want %q", got, want)
	}
	if c.conns != 100 || c.rate != 1000 || c.symbolsPerConn != 5 || c.symbolsPool != 50 ||
		c.duration != 30*time.Second || c.timeout != 10*time.Second || len(c.sourceIPs) != 2 {
		t.Errorf("defaults: got %+v", c)
	}

	c, err = parseConfig([]string{"-url", "ws://h:1/ws/quotes"}, func(k string) string {
		return map[string]string{"TICKLOAD_TOKEN": "tok"}[k]
	}, io.Discard)
	if err != nil || c.token != "tok" || c.wsURL != "ws://h:1/ws/quotes" || c.httpBase != "http://h:1" {
		t.Errorf("token from the environment: got %+v, %v", c, err)
	}
}

func TestParseConfigErrorsNameTheFlag(t *testing.T) {
	env := func(string) string { return "" }
	tests := []struct {
		args []string
		flag string
	}{
		{[]string{}, "-token"},
		{[]string{"-token", "t", "-secret", "s"}, "-secret"},
		{[]string{"-secret", "s", "-conns", "0"}, "-conns"},
		{[]string{"-secret", "s", "-conns", "x"}, "-conns"},
		{[]string{"-secret", "s", "-rate", "0"}, "-rate"},
		{[]string{"-secret", "s", "-symbols-per-conn", "6", "-symbols-pool", "5"}, "-symbols-per-conn"},
		{[]string{"-secret", "s", "-symbols-pool", "0"}, "-symbols-pool"},
		{[]string{"-secret", "s", "-duration", "0s"}, "-duration"},
		{[]string{"-secret", "s", "-slow", "101"}, "-slow"},
		{[]string{"-secret", "s", "-churn", "-1"}, "-churn"},
		{[]string{"-secret", "s", "-slow", "100", "-churn", "1"}, "-churn"},
		{[]string{"-secret", "s", "-timeout", "0s"}, "-timeout"},
		{[]string{"-secret", "s", "-url", "http://h:1"}, "-url"},
		{[]string{"-secret", "s", "-url", "ws://h:1?x=1"}, "-url"},
		{[]string{"-secret", "s", "-source-ips", "nope"}, "-source-ips"},
		{[]string{"-secret", "s", "-nope"}, "-nope"},
	}
	for _, tt := range tests {
		_, err := parseConfig(tt.args, env, io.Discard)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a usage error", tt.args, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.flag) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: got %q, want one line naming %s", tt.args, err, tt.flag)
		}
	}
}
