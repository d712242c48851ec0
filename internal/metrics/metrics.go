// Package metrics defines tickstream's Prometheus collectors in one place, so
// every name carries the tickstream_ prefix and tests can use a fresh
// registry.
package metrics

import "github.com/prometheus/client_golang/prometheus"

// Metrics holds the collectors the server updates.
type Metrics struct {
	Connections      prometheus.Gauge
	Handshakes       *prometheus.CounterVec // by result: "accepted", "upgrade_failed" or the HTTP status of the rejection
	Rejections       *prometheus.CounterVec // refused HTTP requests by error code
	RateLimited      prometheus.Counter     // client messages refused by WS_MESSAGE_RATE
	MessagesSent     prometheus.Counter
	BytesSent        prometheus.Counter
	MessagesReceived prometheus.Counter
	BytesReceived    prometheus.Counter
	UpdatesDelivered prometheus.Counter
	ConflatedUpdates prometheus.Counter
	Closes           *prometheus.CounterVec // by close code
	WriteTimeouts    prometheus.Counter
	SlowConsumers    prometheus.Counter
	FanoutLatency    prometheus.Histogram
	Ticks            prometheus.Counter
	SymbolsMoved     prometheus.Counter
	Subscriptions    prometheus.GaugeFunc
	ActiveSymbols    prometheus.GaugeFunc
	IdleConnections  prometheus.GaugeFunc
}

// Gauges are read when /metrics is scraped.
type Gauges struct {
	Subscriptions   func() float64 // (connection, symbol) pairs
	ActiveSymbols   func() float64 // symbols with a subscriber
	IdleConnections func() float64 // connections subscribed to nothing
}

// New registers the collectors on reg.
func New(reg prometheus.Registerer, g Gauges) *Metrics {
	m := &Metrics{
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tickstream_connections", Help: "Open WebSocket connections."}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_handshakes_total", Help: "WebSocket handshakes by result: accepted, upgrade_failed, or the HTTP status of the rejection."},
			[]string{"result"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_rejections_total", Help: "Refused requests (handshakes and REST) by the error code of their JSON body, such as invalid_token or forbidden_origin."},
			[]string{"code"}),
		RateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_rate_limited_messages_total", Help: "Client messages and pings refused because the connection exceeded WS_MESSAGE_RATE."}),
		MessagesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_messages_sent_total", Help: "WebSocket messages sent to clients."}),
		BytesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_bytes_sent_total", Help: "Bytes written to WebSocket connections, frame headers included."}),
		MessagesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_messages_received_total", Help: "WebSocket data messages received from clients."}),
		BytesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_bytes_received_total", Help: "Payload bytes of WebSocket messages received from clients."}),
		UpdatesDelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_symbol_updates_delivered_total", Help: "Symbol operations (add, update, remove) written to clients."}),
		ConflatedUpdates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_conflated_updates_total", Help: "Quote versions a connection skipped because it was behind; it got the latest instead."}),
		Closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_server_closes_total", Help: "Connections the server closed, by WebSocket close code."},
			[]string{"code"}),
		WriteTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_write_timeouts_total", Help: "Writes that hit WS_WRITE_TIMEOUT before the socket drained."}),
		SlowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_slow_consumer_closes_total", Help: "Connections closed with 4008 after WS_CIRCUIT_BREAKER_THRESHOLD write timeouts in a row."}),
		FanoutLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tickstream_fanout_latency_seconds",
			Help:    "From when a price was computed to when the message carrying it was written to the socket (oldest update of each message).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		Ticks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_ticks_total", Help: "Price feed ticks that moved at least one symbol."}),
		SymbolsMoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_symbol_updates_total", Help: "Quote updates produced by the feed."}),
		Subscriptions: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tickstream_subscriptions", Help: "Subscriptions: one per connection and symbol."}, g.Subscriptions),
		ActiveSymbols: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tickstream_active_symbols", Help: "Symbols with at least one subscriber."}, g.ActiveSymbols),
		IdleConnections: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tickstream_connections_idle", Help: "Open connections subscribed to no symbol; the others are active."}, g.IdleConnections),
	}
	reg.MustRegister(m.Connections, m.Handshakes, m.Rejections, m.RateLimited, m.MessagesSent, m.BytesSent, m.MessagesReceived,
		m.BytesReceived, m.UpdatesDelivered, m.ConflatedUpdates, m.Closes, m.WriteTimeouts, m.SlowConsumers, m.FanoutLatency, m.Ticks, m.SymbolsMoved,
		m.Subscriptions, m.ActiveSymbols, m.IdleConnections)
	return m
}
