package persist

// Regenerate persist.pb.go and persist_vtproto.pb.go after editing
// persist.proto ("make proto" runs this with the plugins at the versions
// go.mod pins).
//
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-vtproto_out=. --go-vtproto_opt=paths=source_relative,features=marshal+unmarshal+size+clone persist.proto
