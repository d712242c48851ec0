package broker

import "github.com/prometheus/client_golang/prometheus"

// RegisterMetrics registers tickstream_broker_up and
// tickstream_feed_leader, read from b's Status when scraped.
func RegisterMetrics(reg prometheus.Registerer, b Broker) {
	gauge := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tickstream_broker_up",
			Help: "1 while the broker's shared store answers (always 1 with BROKER=memory); 0 while the instance serves its own prices."},
			func() float64 { return gauge(b.Status().Up) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tickstream_feed_leader",
			Help: "1 on the instance whose simulator publishes the prices every instance serves (the holder of the lease in Redis; always 1 with BROKER=memory)."},
			func() float64 { return gauge(b.Status().Leader) }),
	)
}

// Degraded returns the reason b's instance serves in a degraded mode,
// empty when it does not; for server.Server.ReportDegraded.
func Degraded(b Broker) func() string {
	return func() string {
		if s := b.Status(); !s.Up {
			return s.Reason
		}
		return ""
	}
}
