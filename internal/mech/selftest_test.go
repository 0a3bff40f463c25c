package mech

import (
	"testing"
	"time"
)

func TestSelfTest(t *testing.T) {
	start := time.Now()
	if err := SelfTest(); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	t.Logf("SelfTest took %v", d)
	if d > 50*time.Millisecond && !raceEnabled {
		t.Errorf("SelfTest took %v, want < 50ms", d)
	}
}

// TestSelfTestDetectsWrongAnswers checks that the known-answer helpers
// fail on a wrong expected value, so a broken primitive cannot pass.
func TestSelfTestDetectsWrongAnswers(t *testing.T) {
	if kat(hSHA256, sha3256ABC) == nil {
		t.Error("hash KAT passed with a wrong digest")
	}
	if katHMAC(tHMAC256, hmacSHA512TC1[:64]) == nil {
		t.Error("HMAC KAT passed with a wrong tag")
	}
	if katEdwards(ed25519Seed, ed25519Pub, ed25519phSig, SignParams{}, nil) == nil {
		t.Error("Ed25519 KAT passed with a wrong signature")
	}
	if katEdwards(ed25519Seed, ed25519phPub, ed25519Sig, SignParams{}, nil) == nil {
		t.Error("Ed25519 KAT passed with a wrong public key")
	}
}

func TestSelfTestNames(t *testing.T) {
	seen := map[string]bool{}
	for _, st := range selfTests {
		if st.name == "" || seen[st.name] {
			t.Errorf("self-test name %q empty or repeated", st.name)
		}
		seen[st.name] = true
	}
}
