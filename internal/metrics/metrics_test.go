package metrics_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tickstream/tickstream/internal/metrics"
)

func TestNamesArePrefixed(t *testing.T) {
	reg := prometheus.NewRegistry()
	one := func() float64 { return 1 }
	m := metrics.New(reg, metrics.Gauges{Subscriptions: one, ActiveSymbols: one, IdleConnections: one})
	m.Handshakes.WithLabelValues("accepted").Inc()
	m.Closes.WithLabelValues("4008").Inc()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(families) < 15 {
		t.Errorf("got %d metric families, want at least 15", len(families))
	}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "tickstream_") {
			t.Errorf("metric %s lacks the tickstream_ prefix", f.GetName())
		}
	}
}
