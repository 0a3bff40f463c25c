package server

import (
	"fmt"
	"reflect"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// The operation table: one row per request type (a field of the Op
// message's oneof), holding everything the daemon knows of it. Every
// question the request path asks of an operation (how to run it, whether
// it runs inline or concurrently, whether it writes the store, how large
// its result may be, its audit name, who may ask for it) is answered
// here, and nowhere else. TestOpTable walks the oneof and fails on a
// request type without a row, or a row without one of its fields: a new
// request type cannot be half-wired.

// opSpec is one row of the table. The zero value of every field but the
// predicates means "not declared", which TestOpTable refuses.
type opSpec struct {
	// name is the operation's name in the audit log and the daemon's log.
	name string
	// run executes the operation: it returns either data, the
	// operation's bytes output, or full, a complete result (see dispatch).
	run opFunc
	// path is the group the operation belongs to.
	path opPath
	// exec says whether a request holding the operation runs on its
	// connection's goroutine or concurrently (isHeavy, runsApart).
	exec execMode
	// apartIf, with execApartIf, says whether this instance runs apart.
	apartIf func(*wire.Op) bool
	// store says whether the operation writes the store (writesStore).
	store storeMode
	// bound is an upper bound of the encoded size of the operation's
	// result, for a daemon whose messages are at most max bytes.
	bound func(op *wire.Op, max int) int
	// who is whom the operation is for; with accessKey, action is what
	// policy.Authorize is asked of the key.
	who    access
	action policy.Action
	// seal says whether the operation needs the daemon unsealed, or may
	// change the seal state (the audit log then takes or drops its keys).
	seal sealNeed
}

// opFunc runs one operation for the identity id; outputs are carved from
// a; data-path operations also set fields of out (the key version).
type opFunc func(ss *Session, op *wire.Op, id Identity, a *arena, out *wire.Result) (data []byte, full *wire.Result, err error)

// opPath is the group of an operation.
type opPath int

const (
	_ opPath = iota
	// pathData: the small operations of the data path, which batches
	// hold by the hundred.
	pathData
	// pathManage: key, session, KDF and store management.
	pathManage
	// pathGeneration: the machine-generation operations (generation.go).
	pathGeneration
)

// execMode is where a request holding the operation runs.
type execMode int

const (
	_ execMode = iota
	// execInline: on the connection's goroutine (unless the operation
	// writes the store: see storeMode).
	execInline
	// execKDF: concurrently, waiting for an Argon2id worker.
	execKDF
	// execApartIf: concurrently when apartIf says so (a long poll, an RSA
	// key generation), else inline.
	execApartIf
)

// storeMode is whether an operation writes the store: such operations
// may wait for a durable write and its fsync, a master-key derivation or
// a backup, and run concurrently, sharing their fsyncs.
type storeMode int

const (
	_ storeMode = iota
	storeNone
	storeWrites
	// storeUnlessEphemeral: writes unless the template asks for an
	// ephemeral key.
	storeUnlessEphemeral
)

// access is whom an operation is for.
type access int

const (
	_ access = iota
	// accessAnyone: any caller; the operation touches no stored key, or
	// only what the caller's own connection holds.
	accessAnyone
	// accessKey: whoever policy.Authorize allows action on the key.
	accessKey
	// accessAdmin: administrators only (policy.Roles.CheckAdmin), checked
	// before the operation runs.
	accessAdmin
	// accessGenerationAdmin: root and the generation administrators
	// (policy.Roles.CheckBump), checked before the operation runs.
	accessGenerationAdmin
)

// sealNeed is how an operation relates to the seal state.
type sealNeed int

const (
	_ sealNeed = iota
	// sealAny: works sealed or not.
	sealAny
	// sealUnsealed: needs the master key (the store refuses otherwise).
	sealUnsealed
	// sealChanges: may change the seal state or the master key.
	sealChanges
)

// Bounds of results (opSpec.bound).
const (
	boundSmall   = 64      // status and a short message
	boundKeyInfo = 4 << 10 // key info with an RSA-4096 public key and a full ACL
)

func fixedBound(n int) func(*wire.Op, int) int { return func(*wire.Op, int) int { return n } }

var (
	smallBound   = fixedBound(boundSmall)
	keyInfoBound = fixedBound(boundSmall + boundKeyInfo)
	digestBound  = fixedBound(boundSmall + 512)
)

// ephemeral reports whether a creating operation's template asks for an
// ephemeral key.
func ephemeral(op *wire.Op) bool {
	switch o := op.GetOp().(type) {
	case *wire.Op_Generate:
		return o.Generate.GetTemplate().GetEphemeral()
	case *wire.Op_Import:
		return o.Import.GetTemplate().GetEphemeral()
	case *wire.Op_Derive:
		return o.Derive.GetTemplate().GetEphemeral()
	case *wire.Op_Unwrap:
		return o.Unwrap.GetTemplate().GetEphemeral()
	case *wire.Op_DerivePassphrase:
		return o.DerivePassphrase.GetTemplate().GetEphemeral()
	}
	return false
}

// full adapts a handler that returns a complete result.
func full(f func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error)) opFunc {
	return func(ss *Session, op *wire.Op, id Identity, _ *arena, _ *wire.Result) ([]byte, *wire.Result, error) {
		res, err := f(ss, op, id)
		return nil, res, err
	}
}

// opTable is the table, keyed by the name of the Op oneof's field.
var opTable = map[protoreflect.Name]opSpec{
	// The data path.
	"encrypt": {name: "encrypt", path: pathData, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: func(op *wire.Op, _ int) int { return boundSmall + len(op.GetEncrypt().GetPlaintext()) + 512 },
		run: func(ss *Session, op *wire.Op, id Identity, a *arena, out *wire.Result) ([]byte, *wire.Result, error) {
			data, err := ss.opEncrypt(op.GetEncrypt(), id, a, out)
			return data, nil, err
		}},
	"decrypt": {name: "decrypt", path: pathData, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: func(op *wire.Op, _ int) int { return boundSmall + len(op.GetDecrypt().GetCiphertext()) },
		run: func(ss *Session, op *wire.Op, id Identity, a *arena, out *wire.Result) ([]byte, *wire.Result, error) {
			data, err := ss.opDecrypt(op.GetDecrypt(), id, a, out)
			return data, nil, err
		}},
	"sign": {name: "sign", path: pathData, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: digestBound,
		run: func(ss *Session, op *wire.Op, id Identity, _ *arena, out *wire.Result) ([]byte, *wire.Result, error) {
			data, err := ss.opSign(op.GetSign(), id, out)
			return data, nil, err
		}},
	"verify": {name: "verify", path: pathData, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: smallBound,
		run: func(ss *Session, op *wire.Op, id Identity, _ *arena, out *wire.Result) ([]byte, *wire.Result, error) {
			return nil, nil, ss.opVerify(op.GetVerify(), id, out)
		}},
	"mac": {name: "mac", path: pathData, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: digestBound,
		run: func(ss *Session, op *wire.Op, id Identity, a *arena, out *wire.Result) ([]byte, *wire.Result, error) {
			data, err := ss.opMAC(op.GetMac(), id, a, out)
			return data, nil, err
		}},
	"mac_verify": {name: "mac-verify", path: pathData, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: smallBound,
		run: func(ss *Session, op *wire.Op, id Identity, _ *arena, out *wire.Result) ([]byte, *wire.Result, error) {
			return nil, nil, ss.opMACVerify(op.GetMacVerify(), id, out)
		}},
	"data_key": {name: "data-key", path: pathData, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: fixedBound(boundSmall + 2*64 + 64),
		run: func(ss *Session, op *wire.Op, id Identity, a *arena, _ *wire.Result) ([]byte, *wire.Result, error) {
			res, err := ss.opDataKey(op.GetDataKey(), id, a)
			return nil, res, err
		}},
	"hash": {name: "hash", path: pathData, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: digestBound,
		run: func(_ *Session, op *wire.Op, _ Identity, a *arena, _ *wire.Result) ([]byte, *wire.Result, error) {
			h := op.GetHash()
			data, err := mech.Hash(h.GetAlg(), h.GetData(), a.take(64))
			return data, nil, err
		}},
	"ping": {name: "ping", path: pathData, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: func(op *wire.Op, _ int) int { return boundSmall + len(op.GetPing().GetPayload()) },
		run: func(_ *Session, op *wire.Op, _ Identity, _ *arena, _ *wire.Result) ([]byte, *wire.Result, error) {
			return op.GetPing().GetPayload(), nil, nil
		}},
	"status": {name: "status", path: pathData, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: keyInfoBound,
		run:   full(func(ss *Session, _ *wire.Op, id Identity) (*wire.Result, error) { return ss.opStatus(id), nil })},

	// SSH certificates (sshcert.go).
	// Taken apart on arrival (packed.go): one never reaches the table.
	"packed": {name: "packed", path: pathData, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: smallBound,
		run: func(*Session, *wire.Op, Identity, *arena, *wire.Result) ([]byte, *wire.Result, error) {
			return nil, nil, errPackedLate
		}},
	// Shared memory (shmem.go): the memfd comes with the request.
	"shm_register": {name: "shm-register", path: pathData, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: smallBound,
		run: func(ss *Session, _ *wire.Op, _ Identity, _ *arena, _ *wire.Result) ([]byte, *wire.Result, error) {
			return nil, nil, ss.opShmRegister()
		}},
	"ssh_certify": {name: "ssh-certify", path: pathManage, exec: execInline, store: storeNone, who: accessKey, action: policy.Use,
		seal: sealAny, bound: sshCertifyBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opSSHCertify(op.GetSshCertify(), id)
		})},

	// Keys.
	"generate": {name: "generate", path: pathManage, exec: execApartIf, apartIf: isRSAGenerate, store: storeUnlessEphemeral,
		who: accessAnyone, seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opGenerate(op.GetGenerate(), id)
		})},
	"import": {name: "import", path: pathManage, exec: execInline, store: storeUnlessEphemeral, who: accessAnyone, seal: sealUnsealed,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opImport(op.GetImport(), id)
		})},
	"open": {name: "open", path: pathManage, exec: execInline, store: storeNone, who: accessKey, action: policy.Open, seal: sealUnsealed,
		bound: keyInfoBound,
		run:   full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) { return ss.opOpen(op.GetOpen(), id) })},
	"close": {name: "close", path: pathManage, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: smallBound,
		run: full(func(ss *Session, op *wire.Op, _ Identity) (*wire.Result, error) {
			return ss.opClose(op.GetClose().GetHandle())
		})},
	"list": {name: "list", path: pathManage, exec: execInline, store: storeNone, who: accessAnyone, seal: sealUnsealed,
		bound: func(_ *wire.Op, max int) int { return listBudget(max) },
		run:   full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) { return ss.opList(op.GetList(), id) })},
	"info": {name: "info", path: pathManage, exec: execInline, store: storeNone, who: accessKey, action: policy.Open, seal: sealAny,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opInfo(op.GetInfo().GetHandle(), id)
		})},
	"export": {name: "export", path: pathManage, exec: execInline, store: storeNone, who: accessKey, action: policy.Export, seal: sealAny,
		bound: fixedBound(boundSmall + 8<<10),
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opExport(op.GetExport(), id)
		})},
	"public_key": {name: "public-key", path: pathManage, exec: execInline, store: storeNone, who: accessKey, action: policy.ReadPublic,
		seal: sealAny, bound: fixedBound(boundSmall + 8<<10),
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opPublicKey(op.GetPublicKey(), id)
		})},
	"destroy": {name: "destroy", path: pathManage, exec: execInline, store: storeWrites, who: accessKey, action: policy.Manage,
		seal: sealUnsealed, bound: smallBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opDestroy(op.GetDestroy().GetHandle(), id)
		})},
	"set_attributes": {name: "set-attributes", path: pathManage, exec: execInline, store: storeWrites, who: accessKey, action: policy.Manage,
		seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opSetAttributes(op.GetSetAttributes(), id)
		})},
	"set_acl": {name: "set-acl", path: pathManage, exec: execInline, store: storeWrites, who: accessKey, action: policy.Manage,
		seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opSetACL(op.GetSetAcl(), id)
		})},
	"derive": {name: "derive", path: pathManage, exec: execInline, store: storeUnlessEphemeral, who: accessKey, action: policy.Use,
		seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opDerive(op.GetDerive(), id)
		})},
	"rotate": {name: "rotate", path: pathManage, exec: execInline, store: storeWrites, who: accessKey, action: policy.Manage,
		seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opRotate(op.GetRotate(), id)
		})},
	"set_lifecycle": {name: "set-lifecycle", path: pathManage, exec: execInline, store: storeWrites, who: accessKey, action: policy.Manage,
		seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opSetLifecycle(op.GetSetLifecycle(), id)
		})},
	"wrap": {name: "wrap", path: pathManage, exec: execInline,
		store: storeWrites, // the first wrap of a key records that it left the daemon
		who:   accessKey, action: policy.Use, seal: sealUnsealed, bound: fixedBound(boundSmall + 16<<10),
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) { return ss.opWrap(op.GetWrap(), id) })},
	"unwrap": {name: "unwrap", path: pathManage, exec: execInline, store: storeUnlessEphemeral, who: accessKey, action: policy.Use,
		seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opUnwrap(op.GetUnwrap(), id)
		})},
	"rewrap": {name: "rewrap", path: pathManage, exec: execInline, store: storeNone, who: accessKey, action: policy.Use, seal: sealAny,
		bound: func(op *wire.Op, _ int) int { return boundSmall + len(op.GetRewrap().GetCiphertext()) },
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opRewrap(op.GetRewrap(), id)
		})},

	// Streaming sessions.
	"session_open": {name: "session-open", path: pathManage, exec: execInline, store: storeNone, who: accessKey, action: policy.Use,
		seal: sealAny, bound: smallBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opSessionOpen(op.GetSessionOpen(), id)
		})},
	"session_update": {name: "session-update", path: pathManage, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: smallBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opSessionUpdate(op.GetSessionUpdate(), id)
		})},
	"session_final": {name: "session-final", path: pathManage, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: digestBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opSessionFinal(op.GetSessionFinal(), id)
		})},
	"session_abort": {name: "session-abort", path: pathManage, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: smallBound,
		run: full(func(ss *Session, op *wire.Op, _ Identity) (*wire.Result, error) {
			return ss.opSessionAbort(op.GetSessionAbort().GetSession())
		})},

	// Argon2id in workers (kdf.go).
	"derive_passphrase": {name: "derive-passphrase", path: pathManage, exec: execKDF, store: storeUnlessEphemeral, who: accessAnyone,
		seal: sealUnsealed, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opDerivePassphrase(op.GetDerivePassphrase(), id)
		})},
	"password_hash": {name: "password-hash", path: pathManage, exec: execKDF, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opPasswordHash(op.GetPasswordHash(), id)
		})},
	"password_verify": {name: "password-verify", path: pathManage, exec: execKDF, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opPasswordVerify(op.GetPasswordVerify(), id)
		})},
	"kdf_calibrate": {name: "kdf-calibrate", path: pathManage, exec: execKDF, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opKdfCalibrate(op.GetKdfCalibrate(), id)
		})},

	// The master key and the store (storeops.go).
	"init": {name: "init", path: pathManage, exec: execInline, store: storeWrites, who: accessAdmin, seal: sealChanges,
		bound: fixedBound(boundSmall + 255*64),
		run:   full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) { return ss.opInit(op.GetInit(), id) })},
	"unseal": {name: "unseal", path: pathManage, exec: execInline, store: storeWrites, who: accessAdmin, seal: sealChanges,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opUnseal(op.GetUnseal(), id)
		})},
	"seal": {name: "seal", path: pathManage, exec: execInline, store: storeWrites, who: accessAdmin, seal: sealChanges,
		bound: keyInfoBound,
		run:   full(func(ss *Session, _ *wire.Op, id Identity) (*wire.Result, error) { return ss.opSeal(id) })},
	"master_rotate": {name: "master-key-rotate", path: pathManage, exec: execInline, store: storeWrites, who: accessAdmin, seal: sealChanges,
		bound: fixedBound(boundSmall + 255*64),
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opMasterRotate(op.GetMasterRotate(), id)
		})},
	"backup": {name: "backup", path: pathManage, exec: execInline, store: storeWrites, who: accessAdmin, seal: sealAny,
		bound: func(_ *wire.Op, max int) int { return boundSmall + max - 1024 }, // see backupChunk
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opBackup(op.GetBackup(), id)
		})},
	"restore": {name: "restore", path: pathManage, exec: execInline, store: storeWrites, who: accessAdmin, seal: sealChanges,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opRestore(op.GetRestore(), id)
		})},

	// The machine generation (generation.go).
	"generation_get": {name: "generation-get", path: pathGeneration, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: keyInfoBound,
		run: full(func(ss *Session, _ *wire.Op, id Identity) (*wire.Result, error) {
			return ss.generationResult(true, id), nil
		})},
	"generation_watch": {name: "generation-watch", path: pathGeneration, exec: execApartIf, store: storeNone, who: accessAnyone,
		seal: sealAny, bound: keyInfoBound,
		apartIf: func(op *wire.Op) bool { return op.GetGenerationWatch().GetTimeoutMs() > 0 },
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opGenerationWatch(op.GetGenerationWatch(), id)
		})},
	"generation_ack": {name: "generation-ack", path: pathGeneration, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opGenerationAck(op.GetGenerationAck(), id)
		})},
	"generation_wait_watchers": {name: "generation-wait-watchers", path: pathGeneration, exec: execApartIf, store: storeNone,
		who: accessAnyone, seal: sealAny, bound: keyInfoBound,
		apartIf: func(op *wire.Op) bool { return op.GetGenerationWaitWatchers().GetTimeoutMs() > 0 },
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opGenerationWaitWatchers(op.GetGenerationWaitWatchers(), id)
		})},
	"generation_bump": {name: "generation-bump", path: pathGeneration, exec: execInline, store: storeNone, who: accessGenerationAdmin,
		seal: sealAny, bound: keyInfoBound,
		run: full(func(ss *Session, op *wire.Op, id Identity) (*wire.Result, error) {
			return ss.opGenerationBump(op.GetGenerationBump(), id)
		})},
	"generation_map": {name: "generation-map", path: pathGeneration, exec: execInline, store: storeNone, who: accessAnyone, seal: sealAny,
		bound: keyInfoBound,
		run: func(ss *Session, _ *wire.Op, _ Identity, a *arena, _ *wire.Result) ([]byte, *wire.Result, error) {
			res, err := ss.opGenerationMap(a)
			return nil, res, err
		}},
}

// opRow is a row of the table with what is derived from the oneof: the
// field, and the fields of its message naming a key handle (target: the
// key an operation acts on when handle is the one it uses, as in wrap) or
// a session, for the audit.
type opRow struct {
	opSpec
	// idx numbers the rows in the oneof's field order (OpNames).
	idx                     int
	field                   protoreflect.FieldDescriptor
	handle, target, session protoreflect.FieldDescriptor
}

var (
	// opRows finds the row of an operation by the Go type of its oneof
	// wrapper (*wire.Op_Encrypt, ...): one map lookup, no reflection of
	// the message.
	opRows map[reflect.Type]*opRow
	// errOpTable says what is wrong with the table, if anything: New
	// refuses to make a server then (and TestOpTable says which row).
	errOpTable error
)

func init() {
	opRows, errOpTable = loadOpRows(opTable)
	rowEncrypt = opRows[reflect.TypeFor[*wire.Op_Encrypt]()]
	rowDecrypt = opRows[reflect.TypeFor[*wire.Op_Decrypt]()]
	rowMAC = opRows[reflect.TypeFor[*wire.Op_Mac]()]
}

// The rows of the operations batches hold thousands of, found without
// the map: a request's operations are looked up several times each (its
// checks, its runs, its reply's bound, its metrics).
var rowEncrypt, rowDecrypt, rowMAC *opRow

// loadOpRows indexes table by the oneof wrapper types. It fails when a
// field of the oneof has no row, or a row no field.
func loadOpRows(table map[protoreflect.Name]opSpec) (map[reflect.Type]*opRow, error) {
	od := (&wire.Op{}).ProtoReflect().Descriptor().Oneofs().ByName("op")
	rows := make(map[reflect.Type]*opRow, od.Fields().Len())
	for i := 0; i < od.Fields().Len(); i++ {
		f := od.Fields().Get(i)
		spec, ok := table[f.Name()]
		if !ok {
			return nil, fmt.Errorf("operation %s (field %d of Op) has no row in the operation table", f.Name(), f.Number())
		}
		// The wrapper's Go type: set the field on an empty Op.
		op := &wire.Op{}
		m := op.ProtoReflect()
		m.Set(f, m.NewField(f))
		row := &opRow{opSpec: spec, field: f, idx: i}
		if md := f.Message(); md != nil {
			fs := md.Fields()
			if h := fs.ByName("handle"); h != nil && h.Kind() == protoreflect.Uint32Kind {
				row.handle = h
			}
			if t := fs.ByName("target"); t != nil && t.Kind() == protoreflect.Uint32Kind {
				row.target = t
			}
			if s := fs.ByName("session"); s != nil && s.Kind() == protoreflect.Uint32Kind {
				row.session = s
			}
		}
		if miss := spec.missingFields(); len(miss) > 0 {
			return nil, fmt.Errorf("operation %s: its row in the operation table does not declare %s", f.Name(), strings.Join(miss, ", "))
		}
		rows[reflect.TypeOf(op.Op)] = row
	}
	for name := range table {
		if od.Fields().ByName(name) == nil {
			return nil, fmt.Errorf("the operation table has a row for %s, which is no field of Op", name)
		}
	}
	return rows, nil
}

// OpNames returns the operations' names, indexed as Metrics sees them;
// index len(OpNames()) stands for an operation this daemon does not know.
func OpNames() []string {
	names := make([]string, len(opRows))
	for _, r := range opRows {
		names[r.idx] = r.name
	}
	return names
}

// opIndex returns op's index in OpNames, or len(OpNames()) if unknown.
func opIndex(op *wire.Op) int {
	if r := rowOf(op); r != nil {
		return r.idx
	}
	return len(opRows)
}

// rowOf returns op's row, or nil for an operation this daemon does not
// know (an empty Op, or a field added to the protocol after it).
func rowOf(op *wire.Op) *opRow {
	if op == nil || op.Op == nil {
		return nil
	}
	switch op.Op.(type) {
	case *wire.Op_Encrypt:
		return rowEncrypt
	case *wire.Op_Decrypt:
		return rowDecrypt
	case *wire.Op_Mac:
		return rowMAC
	}
	return opRows[reflect.TypeOf(op.Op)]
}

// missingFields lists the fields of s left undeclared.
func (s *opSpec) missingFields() []string {
	var miss []string
	add := func(cond bool, name string) {
		if cond {
			miss = append(miss, name)
		}
	}
	add(s.name == "", "name")
	add(s.run == nil, "run")
	add(s.path == 0, "path")
	add(s.exec == 0, "exec")
	add(s.exec == execApartIf && s.apartIf == nil, "apartIf")
	add(s.exec != execApartIf && s.apartIf != nil, "exec (apartIf without execApartIf)")
	add(s.store == 0, "store")
	add(s.bound == nil, "bound")
	add(s.who == 0, "who")
	add(s.who == accessKey && s.action == 0, "action")
	add(s.who != accessKey && s.action != 0, "who (an action without accessKey)")
	add(s.seal == 0, "seal")
	return miss
}

// The questions the request path asks of one operation, answered from
// its row.

// isKDF reports whether op runs Argon2id in a worker.
func isKDF(op *wire.Op) bool {
	r := rowOf(op)
	return r != nil && r.exec == execKDF
}

// isLongPoll reports whether op may wait for a generation change: it must
// run concurrently.
func isLongPoll(op *wire.Op) bool {
	r := rowOf(op)
	return r != nil && r.path == pathGeneration && r.exec == execApartIf && r.apartIf(op)
}

// isGenerationOp reports whether op is one of the generation operations.
func isGenerationOp(op *wire.Op) bool {
	r := rowOf(op)
	return r != nil && r.path == pathGeneration
}

// writesStore reports whether op may wait for the store (a durable write
// and its fsync, a master-key derivation, a backup): run concurrently, such
// operations of pipelined requests share their fsyncs.
func writesStore(op *wire.Op) bool {
	r := rowOf(op)
	if r == nil {
		return false
	}
	return r.writesStore(op)
}

func (r *opRow) writesStore(op *wire.Op) bool {
	switch r.store {
	case storeWrites:
		return true
	case storeUnlessEphemeral:
		return !ephemeral(op)
	}
	return false
}

// runsApart reports whether op runs without a compute slot of its uid
// (peruid.go): it spends its time waiting (for a worker, the store, a
// generation change), or computes in a heavy slot (heavyClassOf).
func runsApart(op *wire.Op) bool { return rowOf(op).runsApart(op) }

func (r *opRow) runsApart(op *wire.Op) bool {
	if r == nil {
		return false
	}
	return r.exec == execKDF || (r.exec == execApartIf && r.apartIf(op)) || r.writesStore(op)
}

// opReplyBound is an upper bound of the encoded size of an operation's
// result, for a daemon whose messages are at most max bytes.
func opReplyBound(op *wire.Op, max int) int { return rowOf(op).replyBound(op, max) }

func (r *opRow) replyBound(op *wire.Op, max int) int {
	if r == nil {
		return boundSmall + boundKeyInfo
	}
	return r.bound(op, max)
}

// changesSeal reports whether req may change the seal state or the master
// key: the audit log then takes, drops or changes its keys.
func changesSeal(req *wire.Request) bool { return sealOps(req.Ops) }

// sealOps is changesSeal of a request's ops.
func sealOps(ops []*wire.Op) bool {
	for _, op := range ops {
		if r := rowOf(op); r != nil && r.seal == sealChanges {
			return true
		}
	}
	return false
}

// opName is op's name in the audit log and the daemon's log.
func opName(op *wire.Op) string { return rowOf(op).opName() }

func (r *opRow) opName() string {
	if r == nil {
		return "none"
	}
	return r.name
}

// isRSAGenerate reports whether op generates an RSA key.
func isRSAGenerate(op *wire.Op) bool {
	g, ok := op.Op.(*wire.Op_Generate)
	if !ok || g.Generate.GetTemplate() == nil {
		return false
	}
	s := key.Lookup(g.Generate.Template.Type)
	return s != nil && s.Family == key.FamilyRSA
}
