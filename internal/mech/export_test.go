package mech

// secretBytes exposes the canonical secret slice to tests, so that they
// can check Destroy wipes it in place.
func (k *Key) secretBytes() []byte {
	if k.secret == nil {
		return nil
	}
	return k.secret.Bytes()
}
