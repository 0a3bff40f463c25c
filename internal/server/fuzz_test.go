package server

import (
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// FuzzRequest sends arbitrary bytes as a request on a connection that
// holds keys of several types, and checks that every message gets a
// well-formed reply and the connection keeps serving. The seed corpus in
// testdata/fuzz/FuzzRequest holds a valid request for every operation.
func FuzzRequest(f *testing.F) {
	for _, seed := range seedRequests() {
		b, err := seed.MarshalVT()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	_, c := pair(f, Config{Limits: Limits{MaxMessageBytes: 64 << 10, MaxSessions: 8, MaxHandles: 64, MaxKeysPerUser: 256}})
	// Handles 1-6: keys the fuzzer's requests can name.
	for i, typ := range []wire.KeyType{wire.KeyType_KEY_TYPE_AES256_GCM, wire.KeyType_KEY_TYPE_HMAC_SHA256,
		wire.KeyType_KEY_TYPE_ED25519, wire.KeyType_KEY_TYPE_ECDSA_P256, wire.KeyType_KEY_TYPE_X25519, wire.KeyType_KEY_TYPE_RSA_2048} {
		send(f, c, uint64(i+1), &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Type: typ, Ephemeral: true, Exportable: true}}}})
		if rep := recv(f, c); rep.Results[0].Status != wire.Status_STATUS_OK {
			f.Fatalf("setup: %v", rep.Results[0].Message)
		}
	}
	c.SetRecvTimeout(30 * time.Second)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if err := c.Send(msg); err != nil {
			t.Skip("message too large for the socket")
		}
		rep := recv(t, c)
		if rep.Version != wire.ProtocolVersion {
			t.Fatalf("reply version %d", rep.Version)
		}
		if _, known := wire.Status_name[int32(rep.Status)]; !known {
			t.Fatalf("unknown status %d", rep.Status)
		}
		if rep.Status != wire.Status_STATUS_OK && len(rep.Results) != 0 {
			t.Fatal("a refused request carries results")
		}
		for _, r := range rep.Results {
			if _, known := wire.Status_name[int32(r.Status)]; !known {
				t.Fatalf("unknown result status %d", r.Status)
			}
			if r.Status == wire.Status_STATUS_INTERNAL {
				t.Fatalf("internal error: %s", r.Message)
			}
		}
		// The connection still serves.
		send(t, c, 1<<62, ping("ok"))
		for {
			rep := recv(t, c)
			if rep.Id == 1<<62 {
				if string(rep.Results[0].Data) != "ok" {
					t.Fatal("ping after the fuzz input failed")
				}
				break
			}
		}
	})
}

// seedRequests is a valid request for every operation, naming the keys
// FuzzRequest sets up.
func seedRequests() []*wire.Request {
	tmpl := &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Name: "fuzzed", Usage: 3, Ephemeral: true}
	ops := []*wire.Op{
		{Op: &wire.Op_Status{Status: &wire.StatusOp{}}},
		ping("seed"),
		{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: tmpl}}},
		{Op: &wire.Op_Import{Import: &wire.Import{Template: tmpl, Format: wire.KeyFormat_KEY_FORMAT_RAW, Data: make([]byte, 32)}}},
		{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Name{Name: &wire.NameRef{Name: "fuzzed"}}}}},
		{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Id{Id: make([]byte, 16)}}}},
		{Op: &wire.Op_Close{Close: &wire.Close{Handle: 7}}},
		{Op: &wire.Op_List{List: &wire.List{Limit: 3}}},
		{Op: &wire.Op_Info{Info: &wire.Info{Handle: 1}}},
		{Op: &wire.Op_Export{Export: &wire.Export{Handle: 1}}},
		{Op: &wire.Op_PublicKey{PublicKey: &wire.PublicKey{Handle: 3, Format: wire.KeyFormat_KEY_FORMAT_SPKI_PEM}}},
		{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: 7}}},
		{Op: &wire.Op_SetAttributes{SetAttributes: &wire.SetAttributes{Handle: 1, Exportable: new(bool)}}},
		{Op: &wire.Op_SetAcl{SetAcl: &wire.SetACL{Handle: 2, Acl: []*wire.AclEntry{{Principal: &wire.AclEntry_Uid{Uid: 7}, Usage: 8}}}}},
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Plaintext: []byte("p"), Aad: []byte("a")}}},
		{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: 1, Ciphertext: make([]byte, 40)}}},
		{Op: &wire.Op_Sign{Sign: &wire.Sign{Handle: 3, Data: []byte("m")}}},
		{Op: &wire.Op_Verify{Verify: &wire.Verify{Handle: 4, Data: []byte("m"), Signature: make([]byte, 70)}}},
		{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: 2, Data: []byte("m")}}},
		{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{Handle: 2, Data: []byte("m"), Tag: make([]byte, 32)}}},
		{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA3_256, Data: []byte("m")}}},
		{Op: &wire.Op_Derive{Derive: &wire.Derive{Handle: 5, PeerPublicKey: make([]byte, 32), Template: tmpl}}},
		{Op: &wire.Op_SessionOpen{SessionOpen: &wire.SessionOpen{Kind: wire.SessionKind_SESSION_KIND_SIGN, Handle: 4}}},
		{Op: &wire.Op_SessionUpdate{SessionUpdate: &wire.SessionUpdate{Session: 1, Data: []byte("chunk")}}},
		{Op: &wire.Op_SessionFinal{SessionFinal: &wire.SessionFinal{Session: 1}}},
		{Op: &wire.Op_SessionAbort{SessionAbort: &wire.SessionAbort{Session: 2}}},
		{Op: &wire.Op_GenerationGet{GenerationGet: &wire.GenerationGet{}}},
		{Op: &wire.Op_GenerationWatch{GenerationWatch: &wire.GenerationWatch{After: 0, TimeoutMs: 10, Name: "fuzzed"}}},
		{Op: &wire.Op_GenerationAck{GenerationAck: &wire.GenerationAck{Generation: 0}}},
		{Op: &wire.Op_GenerationWaitWatchers{GenerationWaitWatchers: &wire.GenerationWaitWatchers{TimeoutMs: 10}}},
		{Op: &wire.Op_GenerationBump{GenerationBump: &wire.GenerationBump{}}},
		{Op: &wire.Op_GenerationMap{GenerationMap: &wire.GenerationMap{}}},
		packedOp(wire.PackedKind_PACKED_KIND_ENCRYPT, 1, "p", "qq"),
		packedOp(wire.PackedKind_PACKED_KIND_DECRYPT, 1, string(make([]byte, 40)), "x", ""),
		packedOp(wire.PackedKind_PACKED_KIND_MAC, 2, "m", "", "mmm"),
		{},
	}
	var reqs []*wire.Request
	for i, op := range ops {
		reqs = append(reqs, &wire.Request{Version: 1, Id: uint64(i + 1), Ops: []*wire.Op{op}})
	}
	reqs = append(reqs, &wire.Request{Version: 1, Id: 100, Ops: ops}) // all in one batch
	reqs = append(reqs, &wire.Request{Version: 2, Id: 101, Ops: ops[:1]})
	return reqs
}
