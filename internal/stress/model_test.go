package stress

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	keywarden "github.com/keywarden/keywarden"
)

// The model: what clients were told, against which the store is checked
// at the end of each round. Every event (an operation's start or end)
// takes the next number of one clock, so that "acknowledged before the
// backup began" has a meaning across goroutines.

type clock struct{ n atomic.Uint64 }

func (c *clock) tick() uint64 { return c.n.Add(1) }

// sample is a result the daemon gave with a key, which it must still
// accept: a ciphertext that decrypts to pt, a signature or a MAC over pt.
type sample struct {
	at      uint64
	ct, aad []byte
	pt      []byte
	sig     []byte
}

// keyRec is one persistent key as clients saw it.
type keyRec struct {
	id   keywarden.KeyID
	typ  keywarden.KeyType
	base bool // one of the keys made at the start, never destroyed

	createStart, acked uint64
	// The last destroy attempt: started, acknowledged, or ended in a way
	// that does not say whether it happened (the client went away).
	destroyStart, destroyAck uint64
	destroyUnknown           bool

	samples []sample
}

// backupInfo is a backup made in this round: the events that began and
// ended it, and its bytes.
type backupInfo struct {
	start, end uint64
	data       []byte
}

// restoreInfo is the restore of a round: began, acknowledged, from what.
type restoreInfo struct {
	start, ack uint64
	from       *backupInfo
}

type model struct {
	clk clock

	mu   sync.Mutex
	keys map[keywarden.KeyID]*keyRec
	// Creations whose outcome the client does not know (the daemon was
	// sealed under them, or the client went away): each may have left a
	// key that no client was told of.
	unknownCreates int
	// Named creations refused for a reason other than a seal: the name
	// must stay free.
	refusedNames []string
}

func newModel() *model { return &model{keys: map[keywarden.KeyID]*keyRec{}} }

func (m *model) acked(r *keyRec) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys[r.id] = r
}

func (m *model) createUnknown() {
	m.mu.Lock()
	m.unknownCreates++
	m.mu.Unlock()
}

func (m *model) refusedName(name string) {
	m.mu.Lock()
	m.refusedNames = append(m.refusedNames, name)
	m.mu.Unlock()
}

func (m *model) addSample(r *keyRec, s sample) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(r.samples) >= 3 {
		r.samples = r.samples[1:]
	}
	r.samples = append(r.samples, s)
}

func (m *model) destroyStarted(r *keyRec, at uint64) {
	m.mu.Lock()
	r.destroyStart, r.destroyUnknown = at, true
	m.mu.Unlock()
}

// destroyEnded records the end of r's destroy: done (acknowledged),
// refused (the key must remain), or neither (unknown).
func (m *model) destroyEnded(r *keyRec, at uint64, done, refused bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case done:
		r.destroyAck, r.destroyUnknown = at, false
	case refused:
		r.destroyUnknown = false
	}
}

// presence is what the store must say of a key.
type presence int

const (
	may presence = iota
	must
	mustNot
)

func (p presence) String() string { return [...]string{"may exist", "must exist", "must not exist"}[p] }

// expect says whether r must be in the store at the end of a round with
// restore rs (nil: none). Without a restore: an acknowledged key must be
// there unless a destroy of it was acknowledged (then it must not) or
// ended without an answer. With one: what the backup held, unless changed
// after the restore; a key whose creation or destroy overlapped the backup
// or the restore may be there or not.
func (m *model) expect(r *keyRec, rs *restoreInfo) presence {
	live := func() presence { // from its own events alone
		switch {
		case r.destroyAck > 0:
			return mustNot
		case r.destroyUnknown:
			return may
		case r.acked > 0:
			return must
		}
		return may
	}
	if rs == nil || r.createStart > rs.ack {
		return live()
	}
	b := rs.from
	if r.destroyStart > rs.ack { // a destroy since the restore
		switch {
		case r.destroyAck > 0:
			return mustNot
		case r.destroyUnknown:
			return may
		}
		// Refused: the key is as the restore left it.
	} else if r.destroyStart > rs.start {
		return may // a destroy that overlapped the restore
	}
	if r.createStart > rs.start {
		return may // a creation that overlapped the restore
	}
	// As the backup held it.
	switch {
	case r.createStart > b.end:
		return mustNot
	case r.acked == 0 || r.acked > b.start:
		return may
	case r.destroyStart > b.start && r.destroyStart <= b.end:
		return may
	case r.destroyAck > 0 && r.destroyAck < b.start:
		return mustNot
	case r.destroyUnknown && r.destroyStart < b.start:
		return may
	}
	return must // in the backup; a destroy since is undone
}

// reconcile compares the records in the store with the model and returns
// what contradicts it; then the model becomes the store's: keys it holds
// that no client was told of are adopted, the rest forgotten. typeOf
// gives the type of an adopted key.
func (m *model) reconcile(actual map[keywarden.KeyID]bool, rs *restoreInfo) (problems []string, adopted []keywarden.KeyID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, r := range m.keys {
		want := m.expect(r, rs)
		switch {
		case want == must && !actual[id]:
			problems = append(problems, fmt.Sprintf("key %s (%s, created at event %d, acknowledged at %d, base %v) is gone: %s",
				id, r.typ, r.createStart, r.acked, r.base, m.describe(r, rs)))
		case want == mustNot && actual[id]:
			problems = append(problems, fmt.Sprintf("key %s (%s) is in the store but %s: %s", id, r.typ, want, m.describe(r, rs)))
		}
	}
	var unknown []keywarden.KeyID
	for id := range actual {
		if _, ok := m.keys[id]; !ok {
			unknown = append(unknown, id)
		}
	}
	sort.Slice(unknown, func(i, j int) bool { return unknown[i].String() < unknown[j].String() })
	if rs == nil && len(unknown) > m.unknownCreates {
		problems = append(problems, fmt.Sprintf("%d keys in the store that no client was told of, and only %d creations without an answer: %v",
			len(unknown), m.unknownCreates, unknown))
	}
	// The model becomes the store.
	for id, r := range m.keys {
		if !actual[id] {
			delete(m.keys, id)
			continue
		}
		r.destroyStart, r.destroyAck, r.destroyUnknown = 0, 0, false
		if rs != nil {
			kept := r.samples[:0]
			for _, s := range r.samples {
				if s.at < rs.from.start {
					kept = append(kept, s)
				}
			}
			r.samples = kept
		}
	}
	m.unknownCreates = 0
	return problems, unknown
}

func (m *model) describe(r *keyRec, rs *restoreInfo) string {
	s := fmt.Sprintf("destroy started %d, acknowledged %d, unknown %v", r.destroyStart, r.destroyAck, r.destroyUnknown)
	if rs != nil {
		s += fmt.Sprintf("; restore %d-%d of the backup made %d-%d", rs.start, rs.ack, rs.from.start, rs.from.end)
	}
	return s
}

// takeRefusedNames returns the names refused since the last call.
func (m *model) takeRefusedNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.refusedNames
	m.refusedNames = nil
	return n
}

// live returns the keys the model holds, base keys first.
func (m *model) all() []*keyRec {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*keyRec, 0, len(m.keys))
	for _, r := range m.keys {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].base != out[j].base {
			return out[i].base
		}
		return out[i].createStart < out[j].createStart
	})
	return out
}

func (m *model) samplesOf(r *keyRec) []sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sample(nil), r.samples...)
}
