package e2e_test

import (
	"crypto/elliptic"
	"encoding/pem"
)

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func ecdhCurve() elliptic.Curve { return elliptic.P256() }
