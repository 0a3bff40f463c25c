package server

import (
	"bytes"
	"context"
	"time"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// The Argon2id operations (docs/kdf.md). None runs Argon2 here: the
// supervisor runs it in a worker process. They run concurrently (isHeavy)
// and count toward the supervisor's memory budget and queue, whoever
// asks: any uid may hash and verify passwords and calibrate; deriving a
// key needs what generate needs (a handle, quota, a free name).
//
// Every argument is checked before a worker starts. Passphrases are
// wiped from the request as soon as the worker has them.

// kdfContext is the context of a derivation for a request of id: it ends
// with the request (ctxOf), and it names the session's uid, whose
// derivations queue apart from other uids' and take turns with them
// (kdf.ForTenant); administrators are not held to one uid's share.
func (ss *Session) kdfContext(id Identity) context.Context {
	return kdf.ForTenant(ss.ctxOf(id), ss.acct.uid, ss.acct.admin)
}

// kdfSup returns the daemon's KDF supervisor.
func (ss *Session) kdfSup() (*kdf.Supervisor, error) {
	if ss.s.cfg.KDF == nil {
		return nil, kdf.ErrUnavailable
	}
	return ss.s.cfg.KDF, nil
}

func (ss *Session) opDerivePassphrase(d *wire.DeriveFromPassphrase, id Identity) (*wire.Result, error) {
	defer clear(d.Passphrase)
	sup, err := ss.kdfSup()
	if err != nil {
		return nil, err
	}
	pt, err := template(d.Template, key.Secret)
	if err != nil {
		return nil, err
	}
	if pt.Spec.Asymmetric || pt.Spec.SecretLen <= 0 {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a key derived from a passphrase must be of a secret key type")
	}
	usage, dec := policy.CheckTemplate(pt)
	if err := dec.Err(); err != nil {
		return nil, err
	}
	params, err := kdf.FromWire(d.Params, sup.Limits().MaxMemoryKiB)
	if err != nil {
		return nil, err
	}
	if err := kdf.CheckSalt(d.Salt); err != nil {
		return nil, err
	}
	if err := kdf.CheckPassword(d.Passphrase); err != nil {
		return nil, err
	}
	if err := ss.precheck(d.Template, id); err != nil {
		return nil, err
	}
	secret, err := sup.Derive(ss.kdfContext(id), params, d.Passphrase, d.Salt, pt.Spec.SecretLen)
	clear(d.Passphrase)
	if err != nil {
		return nil, err
	}
	mat, err := mech.FromSecret(pt.Spec, secret) // wipes secret
	if err != nil {
		return nil, err
	}
	rec := &wire.PassphraseKdf{Algorithm: "argon2id", Version: kdf.Version, Params: params.Wire(), Salt: bytes.Clone(d.Salt)}
	res, err := ss.create(d.Template, pt, usage, mat, id, rec, persist.Origin_ORIGIN_PASSPHRASE)
	if err != nil {
		return nil, err
	}
	ss.log.Debug("key derived from a passphrase", "key", keyIDString(res.GetKey().GetInfo()), "kdf", "argon2id", "params", params.String())
	return res, nil
}

func keyIDString(info *wire.KeyInfo) string {
	if id, ok := key.IDFromBytes(info.GetId()); ok {
		return id.String()
	}
	return ""
}

func (ss *Session) opPasswordHash(h *wire.PasswordHash, id Identity) (*wire.Result, error) {
	defer clear(h.Password)
	sup, err := ss.kdfSup()
	if err != nil {
		return nil, err
	}
	params, err := kdf.FromWire(h.Params, sup.Limits().MaxMemoryKiB)
	if err != nil {
		return nil, err
	}
	if err := kdf.CheckPassword(h.Password); err != nil {
		return nil, err
	}
	salt := h.Salt
	if len(salt) == 0 {
		salt = make([]byte, kdf.DefaultSaltLen)
		if err := random.Read(salt); err != nil {
			return nil, err
		}
	} else if err := kdf.CheckSalt(salt); err != nil {
		return nil, err
	}
	n := int(h.HashLen)
	if n == 0 {
		n = kdf.DefaultHashLen
	}
	if n < kdf.MinHashLen || n > kdf.MaxHashLen {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a password hash is %d to %d bytes", kdf.MinHashLen, kdf.MaxHashLen)
	}
	out, err := sup.Derive(ss.kdfContext(id), params, h.Password, salt, n)
	if err != nil {
		return nil, err
	}
	phc := kdf.EncodePHC(params, salt, out)
	clear(out)
	return dataResult([]byte(phc)), nil
}

var errNoMatch = wire.Errorf(wire.Status_STATUS_VERIFICATION_FAILED, "password does not match")

func (ss *Session) opPasswordVerify(v *wire.PasswordVerify, id Identity) (*wire.Result, error) {
	defer clear(v.Password)
	sup, err := ss.kdfSup()
	if err != nil {
		return nil, err
	}
	h, err := kdf.ParsePHC(v.Phc)
	if err != nil {
		return nil, err
	}
	if err := h.Params.Check(sup.Limits().MaxMemoryKiB); err != nil {
		return nil, err
	}
	if err := kdf.CheckPassword(v.Password); err != nil {
		return nil, err
	}
	match, err := sup.Verify(ss.kdfContext(id), h.Params, v.Password, h.Salt, h.Hash)
	if err != nil {
		return nil, err
	}
	if !match {
		return nil, errNoMatch
	}
	return ok(), nil
}

func (ss *Session) opKdfCalibrate(c *wire.KdfCalibrate, id Identity) (*wire.Result, error) {
	sup, err := ss.kdfSup()
	if err != nil {
		return nil, err
	}
	if c.Threads > kdf.MaxThreads {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "argon2: threads must be at most %d", kdf.MaxThreads)
	}
	var prev *kdf.Trial
	if p := c.Previous; p != nil {
		if p.Threads > kdf.MaxThreads {
			return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "calibration: bad previous measurement")
		}
		prev = &kdf.Trial{Params: kdf.Params{Time: p.Time, MemoryKiB: p.MemoryKib, Threads: uint8(p.Threads)},
			Elapsed: time.Duration(min(c.PreviousNs, uint64(time.Hour)))}
	}
	if c.Step > kdf.MaxCalibrationSteps {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "calibration: bad step")
	}
	st, err := sup.Calibrate(ss.kdfContext(id), time.Duration(c.TargetMs)*time.Millisecond, c.MaxMemoryKib,
		uint8(c.Threads), prev, int(c.Step))
	if err != nil {
		return nil, err
	}
	return &wire.Result{Value: &wire.Result_KdfCalibration{KdfCalibration: &wire.KdfCalibration{
		Params: st.Trial.Params.Wire(), ElapsedNs: uint64(st.Trial.Elapsed), Done: st.Done,
		MemoryCapKib: st.CapKiB, Step: uint32(st.Step)}}}, nil
}
