package wire

// Reply and Result are recycled (vtprotobuf's pool feature) by the client,
// which decodes replies without copying. A recycled message keeps its byte
// slices truncated, not cleared, and UnmarshalVT appends into them: clear
// them (set nil) before recycling a message whose fields point into a
// buffer someone still holds.
//
// Regenerate keywarden.pb.go and keywarden_vtproto.pb.go after editing
// keywarden.proto. It needs protoc, and protoc-gen-go and
// protoc-gen-go-vtproto in $PATH at the versions go.mod pins as tools
// ("make proto" installs them and runs this).
//
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-vtproto_out=. --go-vtproto_opt=paths=source_relative,features=marshal+unmarshal+unmarshal_unsafe+size+pool,pool=github.com/keywarden/keywarden/internal/wire.Reply,pool=github.com/keywarden/keywarden/internal/wire.Result,pool=github.com/keywarden/keywarden/internal/wire.Request,pool=github.com/keywarden/keywarden/internal/wire.Op,pool=github.com/keywarden/keywarden/internal/wire.Encrypt,pool=github.com/keywarden/keywarden/internal/wire.Decrypt,pool=github.com/keywarden/keywarden/internal/wire.Sign,pool=github.com/keywarden/keywarden/internal/wire.Verify,pool=github.com/keywarden/keywarden/internal/wire.Mac,pool=github.com/keywarden/keywarden/internal/wire.MacVerify,pool=github.com/keywarden/keywarden/internal/wire.Hash,pool=github.com/keywarden/keywarden/internal/wire.Ping keywarden.proto
