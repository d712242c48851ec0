package main

// assign returns the k consecutive symbols of pool that connection i
// subscribes to, starting at (i*k) mod len(pool) and wrapping. Consecutive
// connections thus cover the pool evenly, and every symbol has about
// conns*k/len(pool) subscribers. k must not exceed len(pool).
func assign(i, k int, pool []string) []string {
	out := make([]string, k)
	start := (i * k) % len(pool)
	for j := range out {
		out[j] = pool[(start+j)%len(pool)]
	}
	return out
}

// slowSlots picks which n of conns connections are slow, spread evenly over
// the indexes so that slow readers hold the same mix of symbols as the rest.
func slowSlots(n, conns int) map[int]bool {
	out := make(map[int]bool, n)
	for j := range n {
		out[j*conns/n] = true
	}
	return out
}
