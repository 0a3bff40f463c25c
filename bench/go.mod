module github.com/keywarden/keywarden/bench

go 1.26.0

require (
	github.com/awnumar/memguard v0.23.0
	github.com/keywarden/keywarden v0.0.0-00010101000000-000000000000
)

require (
	github.com/awnumar/memcall v0.4.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace github.com/keywarden/keywarden => ../
