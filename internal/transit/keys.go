package transit

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// Transit's key types and the core's.
var keyTypes = map[string]wire.KeyType{
	"aes256-gcm96": wire.KeyType_KEY_TYPE_AES256_GCM,
	"ed25519":      wire.KeyType_KEY_TYPE_ED25519,
	"ecdsa-p256":   wire.KeyType_KEY_TYPE_ECDSA_P256,
	"ecdsa-p384":   wire.KeyType_KEY_TYPE_ECDSA_P384,
	"rsa-2048":     wire.KeyType_KEY_TYPE_RSA_2048,
	"rsa-3072":     wire.KeyType_KEY_TYPE_RSA_3072,
	"rsa-4096":     wire.KeyType_KEY_TYPE_RSA_4096,
	"hmac":         wire.KeyType_KEY_TYPE_HMAC_SHA256,
}

func typeName(t wire.KeyType) string {
	for n, x := range keyTypes {
		if x == t {
			return n
		}
	}
	if n, ok := wire.KeyTypeName(t); ok {
		return n
	}
	return "unknown"
}

func keyType(s string) (wire.KeyType, error) {
	t, ok := keyTypes[s]
	if !ok {
		switch s {
		case "aes128-gcm96", "chacha20-poly1305", "ecdsa-p521", "managed_key", "aes128-cmac", "aes256-cmac", "ml-dsa", "slh-dsa", "hybrid":
			return 0, notOffered("key type %q", s)
		}
		return 0, badRequest("unknown key type %q", s)
	}
	return t, nil
}

// wrappingKeyName is the name of each uid's wrapping key for imports
// (wrapping_key).
const wrappingKeyName = "_transit-wrapping"

// period reads a duration given in seconds or as Go or Vault write it
// ("24h").
func period(p params, k string) (int64, error) {
	s, err := p.str(k)
	if err != nil || s == "" {
		return 0, err
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	if strings.HasSuffix(s, "d") {
		if n, err := strconv.ParseInt(strings.TrimSuffix(s, "d"), 10, 64); err == nil && n >= 0 {
			return n * 86400, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, badRequest("%s: want a duration", k)
	}
	return int64(d / time.Second), nil
}

// generate makes the caller's key name of transit type typ, with the
// creation parameters of p.
func generate(rq *request, name, typ string, p params) (*wire.KeyInfo, error) {
	t, err := keyType(typ)
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"derived", "convergent_encryption", "allow_plaintext_backup"} {
		if b, err := p.bool(k); err != nil {
			return nil, err
		} else if b {
			return nil, notOffered("%s", k)
		}
	}
	if n, err := p.int("key_size"); err != nil {
		return nil, err
	} else if n != 0 && n != 32 {
		return nil, notOffered("key_size %d (hmac keys are 32 bytes)", n)
	}
	exp, err := p.bool("exportable")
	if err != nil {
		return nil, err
	}
	rot, err := period(p, "auto_rotate_period")
	if err != nil {
		return nil, err
	}
	r, err := rq.c.do1(rq.ctx, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Name: name, Type: t, Exportable: exp, RotateAfterSeconds: rot}}}})
	if err != nil {
		return nil, err
	}
	// The key is open on the session already: keep its handle.
	kr := r.GetKey()
	rq.c.mu.Lock()
	if _, ok := rq.c.handles[name]; !ok && len(rq.c.handles) < maxHandles {
		rq.c.handles[name] = openKey{h: kr.GetHandle(), typ: t}
	} else {
		defer rq.c.closeHandles(rq.ctx, []uint32{kr.GetHandle()})
	}
	rq.c.mu.Unlock()
	return kr.GetInfo(), nil
}

// keyInfo describes the caller's key name as it is now.
func keyInfo(rq *request, name string) (*wire.KeyInfo, error) {
	rs, _, err := rq.c.withKey(rq.ctx, name, 1, func(k openKey, _ int) *wire.Op {
		return &wire.Op{Op: &wire.Op_Info{Info: &wire.Info{Handle: k.h}}}
	})
	if err != nil {
		return nil, err
	}
	if r := rs[0]; r.Status != wire.Status_STATUS_OK {
		return nil, &coreError{status: r.Status, msg: r.Message}
	}
	return rs[0].GetInfo(), nil
}

// keyOp runs op, made for the handle of the caller's key name, and
// returns its result.
func keyOp(rq *request, name string, mk func(h uint32) *wire.Op) (*wire.Result, error) {
	rs, _, err := rq.c.withKey(rq.ctx, name, 1, func(k openKey, _ int) *wire.Op { return mk(k.h) })
	if err != nil {
		return nil, err
	}
	if r := rs[0]; r.Status != wire.Status_STATUS_OK {
		return nil, &coreError{status: r.Status, msg: r.Message}
	}
	return rs[0], nil
}

// describe is transit's description of a key (GET keys/:name).
func describe(info *wire.KeyInfo) map[string]any {
	lc := info.GetLifecycle()
	t := info.Type
	asym := info.PublicKey != nil
	keys := map[string]any{}
	for _, v := range lc.GetVersions() {
		created := time.Unix(0, v.CreatedUnixNano)
		if !asym {
			keys[strconv.FormatUint(uint64(v.Version), 10)] = created.Unix()
			continue
		}
		e := map[string]any{"creation_time": created.UTC().Format(time.RFC3339Nano), "name": publicName(t), "public_key": ""}
		if v.Version == info.Version {
			e["public_key"] = publicForm(t, info.PublicKey)
		}
		keys[strconv.FormatUint(uint64(v.Version), 10)] = e
	}
	minDec := max(lc.GetMinVersion(), 1)
	var minAvail uint32
	if vs := lc.GetVersions(); len(vs) > 0 && vs[0].Version > 1 {
		minAvail = vs[0].Version
	}
	aes := t == wire.KeyType_KEY_TYPE_AES256_GCM
	rsaKey := t == wire.KeyType_KEY_TYPE_RSA_2048 || t == wire.KeyType_KEY_TYPE_RSA_3072 || t == wire.KeyType_KEY_TYPE_RSA_4096
	origin := lc.GetOrigin()
	return map[string]any{
		"name": info.Name, "type": typeName(t), "keys": keys,
		"latest_version": info.Version, "min_decryption_version": minDec, "min_encryption_version": 0,
		"min_available_version": minAvail, "deletion_allowed": lc.GetDeletionAllowed(),
		"exportable": info.Exportable, "allow_plaintext_backup": false, "derived": false,
		"supports_encryption": aes || rsaKey, "supports_decryption": aes || rsaKey,
		"supports_derivation": false, "supports_signing": asym,
		"auto_rotate_period": lc.GetRotateAfterSeconds(),
		"imported_key":       origin == wire.KeyOrigin_KEY_ORIGIN_IMPORTED || origin == wire.KeyOrigin_KEY_ORIGIN_UNWRAPPED,
	}
}

// publicName is transit's name of a public key's type.
func publicName(t wire.KeyType) string {
	switch t {
	case wire.KeyType_KEY_TYPE_ECDSA_P256:
		return "P-256"
	case wire.KeyType_KEY_TYPE_ECDSA_P384:
		return "P-384"
	}
	return typeName(t)
}

// publicForm is transit's form of a public key given as SPKI DER: the
// base64 of the raw key for Ed25519, PEM for the others.
func publicForm(t wire.KeyType, spki []byte) string {
	if t == wire.KeyType_KEY_TYPE_ED25519 {
		if pub, err := x509.ParsePKIXPublicKey(spki); err == nil {
			if ek, ok := pub.(ed25519.PublicKey); ok {
				return base64.StdEncoding.EncodeToString(ek)
			}
		}
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))
}

func readKey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	info, err := keyInfo(rq, name)
	var nk errNoKey
	if errors.As(err, &nk) {
		return nil, &apiError{code: 404, st: wire.Status_STATUS_NOT_FOUND}
	}
	if err != nil {
		return nil, err
	}
	return describe(info), nil
}

func createKey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	p := rq.params()
	typ, err := p.str("type")
	if err != nil {
		return nil, err
	}
	if typ == "" {
		typ = "aes256-gcm96"
	}
	info, err := generate(rq, name, typ, p)
	var ce *coreError
	if errors.As(err, &ce) && ce.status == wire.Status_STATUS_ALREADY_EXISTS {
		// As transit: making a key that exists changes nothing.
		if info, err = keyInfo(rq, name); err != nil {
			return nil, err
		}
		return describe(info), nil
	}
	if err != nil {
		return nil, err
	}
	return describe(info), nil
}

func deleteKey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	_, err = keyOp(rq, name, func(h uint32) *wire.Op {
		return &wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: h}}}
	})
	var ce *coreError
	if errors.As(err, &ce) && ce.status == wire.Status_STATUS_POLICY_VIOLATION {
		return nil, &apiError{code: 400, msg: "deletion is not allowed for this key", st: ce.status}
	}
	if err != nil {
		return nil, err
	}
	rq.c.mu.Lock()
	delete(rq.c.handles, name)
	rq.c.mu.Unlock()
	return nil, nil
}

func configKey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	p := rq.params()
	info, err := keyInfo(rq, name)
	if err != nil {
		return nil, err
	}
	sl := &wire.SetLifecycle{}
	change := false
	if p.has("min_decryption_version") {
		v, err := p.int("min_decryption_version")
		if err != nil {
			return nil, err
		}
		if v < 0 || v > int64(info.Version) {
			return nil, badRequest("cannot set min_decryption_version to %d: the latest version is %d", v, info.Version)
		}
		if v > 0 {
			mv := uint32(v)
			sl.MinVersion, change = &mv, true
		}
	}
	if p.has("min_encryption_version") {
		// The core always encrypts with the newest version, which meets
		// any minimum up to it.
		v, err := p.int("min_encryption_version")
		if err != nil {
			return nil, err
		}
		if v < 0 || v > int64(info.Version) {
			return nil, badRequest("cannot set min_encryption_version to %d: the latest version is %d", v, info.Version)
		}
	}
	if p.has("deletion_allowed") {
		b, err := p.bool("deletion_allowed")
		if err != nil {
			return nil, err
		}
		sl.DeletionAllowed, change = &b, true
	}
	if p.has("auto_rotate_period") {
		n, err := period(p, "auto_rotate_period")
		if err != nil {
			return nil, err
		}
		sl.RotateAfterSeconds, change = &n, true
	}
	if b, err := p.bool("allow_plaintext_backup"); err != nil {
		return nil, err
	} else if b {
		return nil, notOffered("allow_plaintext_backup")
	}
	var ops []func(h uint32) *wire.Op
	if p.has("exportable") {
		b, err := p.bool("exportable")
		if err != nil {
			return nil, err
		}
		if b && !info.Exportable {
			return nil, badRequest("a key made not exportable cannot be made exportable")
		}
		if !b && info.Exportable {
			ops = append(ops, func(h uint32) *wire.Op {
				return &wire.Op{Op: &wire.Op_SetAttributes{SetAttributes: &wire.SetAttributes{Handle: h, Exportable: &b}}}
			})
		}
	}
	if change {
		ops = append(ops, func(h uint32) *wire.Op { sl.Handle = h; return &wire.Op{Op: &wire.Op_SetLifecycle{SetLifecycle: sl}} })
	}
	for _, mk := range ops {
		if _, err := keyOp(rq, name, mk); err != nil {
			return nil, err
		}
	}
	if info, err = keyInfo(rq, name); err != nil {
		return nil, err
	}
	return describe(info), nil
}

func rotateKey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	r, err := keyOp(rq, name, func(h uint32) *wire.Op { return &wire.Op{Op: &wire.Op_Rotate{Rotate: &wire.Rotate{Handle: h}}} })
	if err != nil {
		return nil, err
	}
	return describe(r.GetInfo()), nil
}

func trimKey(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	p := rq.params()
	v, err := p.int("min_available_version")
	if err != nil {
		return nil, err
	}
	if v <= 0 {
		return nil, badRequest("missing or invalid min_available_version")
	}
	info, err := keyInfo(rq, name)
	if err != nil {
		return nil, err
	}
	if uint32(v) > max(info.GetLifecycle().GetMinVersion(), 1) {
		return nil, badRequest("cannot set min_available_version above min_decryption_version")
	}
	tb := uint32(v)
	if _, err := keyOp(rq, name, func(h uint32) *wire.Op {
		return &wire.Op{Op: &wire.Op_SetLifecycle{SetLifecycle: &wire.SetLifecycle{Handle: h, TrimBelow: &tb}}}
	}); err != nil {
		return nil, err
	}
	if info, err = keyInfo(rq, name); err != nil {
		return nil, err
	}
	return describe(info), nil
}

func listKeys(rq *request) (any, error) {
	var names []string
	var after []byte
	for {
		r, err := rq.c.do1(rq.ctx, &wire.Op{Op: &wire.Op_List{List: &wire.List{After: after}}})
		if err != nil {
			return nil, err
		}
		l := r.GetList()
		for _, k := range l.GetKeys() {
			if k.OwnerUid == rq.c.id.UID && k.Name != "" && k.Name != wrappingKeyName && !k.Ephemeral {
				names = append(names, k.Name)
			}
		}
		if len(l.GetNext()) == 0 {
			break
		}
		after = l.Next
	}
	if len(names) == 0 {
		// As Vault: an empty list is not found.
		return nil, &apiError{code: 404, st: wire.Status_STATUS_NOT_FOUND}
	}
	return map[string]any{"keys": names}, nil
}

// export answers export/:type/:name(/:version) for an exportable key,
// in transit's forms: raw base64 for secret keys and Ed25519 (its
// 64-byte private key), PEM for ECDSA (SEC 1) and RSA (PKCS #1).
func export(rq *request) (any, error) {
	name, err := rq.name()
	if err != nil {
		return nil, err
	}
	info, err := keyInfo(rq, name)
	if err != nil {
		return nil, err
	}
	t := info.Type
	et := rq.vars["type"]
	asym := info.PublicKey != nil
	switch et {
	case "encryption-key":
		if t != wire.KeyType_KEY_TYPE_AES256_GCM && !strings.HasPrefix(typeName(t), "rsa-") {
			return nil, badRequest("encryption-key export: the key cannot encrypt")
		}
	case "signing-key":
		if !asym {
			return nil, badRequest("signing-key export: the key cannot sign")
		}
	case "hmac-key":
		if t != wire.KeyType_KEY_TYPE_HMAC_SHA256 {
			return nil, notOffered("hmac-key export of a key that is not an hmac key")
		}
	case "public-key":
		if !asym {
			return nil, badRequest("public-key export: the key has no public key")
		}
	default:
		return nil, badRequest("invalid export type %q", et)
	}
	if v := rq.vars["version"]; v != "" && v != "latest" && v != strconv.FormatUint(uint64(info.Version), 10) {
		return nil, notOffered("export of version %s other than the newest (%d)", v, info.Version)
	}
	var s string
	if et == "public-key" {
		s = publicForm(t, info.PublicKey)
	} else {
		if !info.Exportable {
			return nil, badRequest("private key material is not exportable")
		}
		format := wire.KeyFormat_KEY_FORMAT_RAW
		if asym {
			format = wire.KeyFormat_KEY_FORMAT_PKCS8_DER
		}
		r, err := keyOp(rq, name, func(h uint32) *wire.Op {
			return &wire.Op{Op: &wire.Op_Export{Export: &wire.Export{Handle: h, Format: format}}}
		})
		if err != nil {
			return nil, err
		}
		defer clear(r.Data)
		if s, err = exportForm(t, r.Data); err != nil {
			return nil, err
		}
	}
	return map[string]any{"name": name, "type": typeName(t),
		"keys": map[string]string{strconv.FormatUint(uint64(info.Version), 10): s}}, nil
}

// exportForm is transit's form of exported key bytes (raw, or PKCS #8).
func exportForm(t wire.KeyType, b []byte) (string, error) {
	if t == wire.KeyType_KEY_TYPE_AES256_GCM || t == wire.KeyType_KEY_TYPE_HMAC_SHA256 {
		return base64.StdEncoding.EncodeToString(b), nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b)
	if err != nil {
		return "", errors.New("transit: the core exported an unreadable key")
	}
	var der []byte
	var typ string
	switch k := k.(type) {
	case ed25519.PrivateKey:
		defer clear(k)
		return base64.StdEncoding.EncodeToString(k), nil
	case *ecdsa.PrivateKey:
		if der, err = x509.MarshalECPrivateKey(k); err != nil {
			return "", err
		}
		typ = "EC PRIVATE KEY"
	case *rsa.PrivateKey:
		der, typ = x509.MarshalPKCS1PrivateKey(k), "RSA PRIVATE KEY"
	default:
		return "", errors.New("transit: the core exported a key of an unknown type")
	}
	defer clear(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})), nil
}
