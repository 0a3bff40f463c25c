package wire

// Recycle returns a request decoded with UnmarshalVTUnsafe, and the
// operations in it, to their pools (see gen.go). It first clears every
// byte slice in them: a recycled message keeps its slices truncated, and
// the decoder that appends (UnmarshalVT) would write into the buffer they
// point to. Nothing may use req afterwards.
func Recycle(req *Request) {
	for _, op := range req.Ops {
		switch o := op.GetOp().(type) {
		case *Op_Encrypt:
			o.Encrypt.Plaintext, o.Encrypt.Aad = nil, nil
		case *Op_Decrypt:
			o.Decrypt.Ciphertext, o.Decrypt.Aad = nil, nil
		case *Op_Sign:
			o.Sign.Data = nil
		case *Op_Verify:
			o.Verify.Data, o.Verify.Signature = nil, nil
		case *Op_Mac:
			o.Mac.Data = nil
		case *Op_MacVerify:
			o.MacVerify.Data, o.MacVerify.Tag = nil, nil
		case *Op_Hash:
			o.Hash.Data = nil
		case *Op_Ping:
			o.Ping.Payload = nil
		case *Op_Packed:
			o.Packed.Aad, o.Packed.Messages = nil, nil
		}
	}
	req.ReturnToVTPool()
}
