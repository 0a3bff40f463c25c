package seal

import "time"

// limiter slows down guessing: after the n-th failed unseal in a row,
// attempts are refused for 2^(n-1) seconds, at most a minute. (Each
// passphrase attempt also costs an Argon2id derivation.)
type limiter struct {
	failures int
	until    time.Time
}

const maxBackoff = time.Minute

func (l *limiter) fail(now time.Time) {
	l.failures++
	d := maxBackoff
	if l.failures <= 7 {
		d = min(time.Second<<(l.failures-1), maxBackoff)
	}
	l.until = now.Add(d)
}

func (l *limiter) wait(now time.Time) time.Duration {
	if now.Before(l.until) {
		return l.until.Sub(now)
	}
	return 0
}

func (l *limiter) reset() { *l = limiter{} }
