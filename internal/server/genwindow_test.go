package server

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// changeAt returns a server whose generation changes once, when work done
// within one generation reaches stage for the n-th time (n from 1) after
// arm is called.
func changeAt(t *testing.T, stage onceStage, n int) (c *seqpacket.Conn, arm func()) {
	t.Helper()
	gen := genid.New(genid.Config{})
	t.Cleanup(func() { gen.Close() })
	var left atomic.Int64
	cfg := Config{Generation: gen}
	cfg.onceHook = func(s onceStage) {
		if s == stage && left.Add(-1) == 0 {
			gen.Bump("test: a change during the operation")
		}
	}
	_, c = pair(t, cfg)
	return c, func() { left.Store(int64(n)) }
}

func genAES(t *testing.T, c *seqpacket.Conn, id uint64, usage uint32, wrappable bool) uint32 {
	t.Helper()
	r := one(t, c, id, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true, Usage: usage, Wrappable: wrappable}}}})
	if r.Status != wire.Status_STATUS_OK {
		t.Fatalf("generate: %v %s", r.Status, r.Message)
	}
	return r.GetKey().GetHandle()
}

func encryptOp(h uint32, msg string) *wire.Op {
	return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: []byte(msg)}}}
}

// An AES-GCM encryption (alone, a run of them in a batch, a data key, a
// rewrap) that a machine generation change reaches after its key
// version's budget was counted, or after its nonce was drawn and the
// message sealed, fails with GENERATION_CHANGED rather than being
// answered: its version is closed by the change, and a clone holds the
// same count and may hold the same nonce. Done again, it is encrypted
// under the key's next version, of the new generation.
func TestEncryptionWithinOneGeneration(t *testing.T) {
	ops := map[string]func(h uint32, ct []byte) []*wire.Op{
		"encrypt": func(h uint32, _ []byte) []*wire.Op { return []*wire.Op{encryptOp(h, "lone")} },
		"run": func(h uint32, _ []byte) []*wire.Op {
			return []*wire.Op{encryptOp(h, "a"), encryptOp(h, "b"), encryptOp(h, "c")}
		},
		"data_key": func(h uint32, _ []byte) []*wire.Op {
			return []*wire.Op{{Op: &wire.Op_DataKey{DataKey: &wire.DataKey{Handle: h, Plaintext: true}}}}
		},
		"rewrap": func(h uint32, ct []byte) []*wire.Op {
			return []*wire.Op{{Op: &wire.Op_Rewrap{Rewrap: &wire.Rewrap{Handle: h, Ciphertext: ct}}}}
		},
	}
	for _, stage := range []onceStage{stageCounted, stageMade} {
		for name, mk := range ops {
			t.Run(fmt.Sprintf("%s/stage%d", name, stage), func(t *testing.T) {
				c, arm := changeAt(t, stage, 1)
				h := genAES(t, c, 1, 0, false)
				ct := one(t, c, 2, encryptOp(h, "before")).Data
				arm()
				send(t, c, 3, mk(h, ct)...)
				rep := recv(t, c)
				if rep.Status != wire.Status_STATUS_OK {
					t.Fatalf("request: %v %s", rep.Status, rep.Message)
				}
				for i, r := range rep.Results {
					if r.Status != wire.Status_STATUS_GENERATION_CHANGED || len(r.Data) != 0 || r.GetDataKey() != nil {
						t.Errorf("operation %d reached by the change: %v %q, version %d, %d bytes", i, r.Status, r.Message, r.KeyVersion, len(r.Data))
					}
				}
				send(t, c, 4, mk(h, ct)...)
				for i, r := range recv(t, c).Results {
					if r.Status != wire.Status_STATUS_OK || r.KeyVersion != 2 {
						t.Errorf("operation %d again, after the change: %v %q, version %d", i, r.Status, r.Message, r.KeyVersion)
					}
				}
			})
		}
	}
}

// A run of encryptions that a change reaches midway keeps the
// encryptions made before it, and fails the rest.
func TestEncryptionRunMidwayChange(t *testing.T) {
	const n, at = 8, 3
	c, arm := changeAt(t, stageMade, at)
	h := genAES(t, c, 1, 0, false)
	var run []*wire.Op
	for i := range n {
		run = append(run, encryptOp(h, fmt.Sprint(i)))
	}
	arm()
	send(t, c, 2, run...)
	for i, r := range recv(t, c).Results {
		switch {
		case i < at-1 && (r.Status != wire.Status_STATUS_OK || r.KeyVersion != 1):
			t.Errorf("encryption %d, made before the change: %v %q, version %d", i, r.Status, r.Message, r.KeyVersion)
		case i >= at-1 && r.Status != wire.Status_STATUS_GENERATION_CHANGED:
			t.Errorf("encryption %d, reached by the change: %v, version %d", i, r.Status, r.KeyVersion)
		}
	}
}

// A key wrapped in keywarden's format draws a random salt for its blob:
// a wrap that a change reaches once its blob is made fails, as an
// encryption does.
func TestWrapWithinOneGeneration(t *testing.T) {
	c, arm := changeAt(t, stageMade, 1)
	wk := genAES(t, c, 1, uint32(wire.Usage_USAGE_WRAP), false)
	tk := genAES(t, c, 2, 0, true)
	wrapOp := &wire.Op{Op: &wire.Op_Wrap{Wrap: &wire.Wrap{Handle: wk, Target: tk}}}
	arm()
	if r := one(t, c, 3, wrapOp); r.Status != wire.Status_STATUS_GENERATION_CHANGED || len(r.Data) != 0 {
		t.Fatalf("wrap reached by the change: %v %q, %d bytes", r.Status, r.Message, len(r.Data))
	}
	if r := one(t, c, 4, wrapOp); r.Status != wire.Status_STATUS_OK || len(r.Data) == 0 {
		t.Fatalf("wrap again: %v %q", r.Status, r.Message)
	}
}

// AES-GCM material drawn before a generation change, for a key added
// after it, is the same in every clone: its version gets no budget in
// the new generation, and the key's first encryption makes version 2.
func TestGenerateAcrossChange(t *testing.T) {
	c, arm := changeAt(t, stageMade, 1)
	arm()
	h := genAES(t, c, 1, 0, false)
	if r := one(t, c, 2, encryptOp(h, "x")); r.Status != wire.Status_STATUS_OK || r.KeyVersion != 2 {
		t.Fatalf("first encryption of a key whose material a change followed: %v %q, version %d", r.Status, r.Message, r.KeyVersion)
	}
	h = genAES(t, c, 3, 0, false)
	if r := one(t, c, 4, encryptOp(h, "y")); r.Status != wire.Status_STATUS_OK || r.KeyVersion != 1 {
		t.Fatalf("first encryption of a key made within one generation: %v %q, version %d", r.Status, r.Message, r.KeyVersion)
	}
}
