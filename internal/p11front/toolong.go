package p11front

import (
	"fmt"
	"io"

	"github.com/keywarden/keywarden/internal/wire"
)

// oversized answers a frame longer than the front takes (a client that
// is not keywarden's module, which refuses such calls before sending
// them). The frame's header says where the next one starts, so the
// connection need not end: its options and body are read and dropped as
// they come, never held (but for the body's first bytes, which name the
// call and its session), under the frame's deadline, and the answer is
// the error of the call's argument too long (tooLong). An error is a
// read that failed: the connection ends.
func (c *conn) oversized(olen, blen uint32) ([]byte, error) {
	if _, err := io.CopyN(io.Discard, c.rd, int64(olen)); err != nil {
		return nil, err
	}
	var head [64]byte
	n := min(int64(blen), int64(len(head)))
	if _, err := io.ReadFull(c.rd, head[:n]); err != nil {
		return nil, err
	}
	_, err := io.CopyN(io.Discard, c.rd, int64(blen)-n)
	if err != nil {
		clear(head[:])
		return nil, err
	}
	body := c.tooLong(head[:n], olen, blen)
	clear(head[:])
	return body, nil
}

// opOfCall is the kind of operation each call of an operation (not its
// C_*Init) belongs to: a failure of the call ends the operation.
var opOfCall = map[int]int{
	callEncrypt: opEncrypt, callEncryptUpdate: opEncrypt, callEncryptFinal: opEncrypt,
	callDecrypt: opDecrypt, callDecryptUpdate: opDecrypt, callDecryptFinal: opDecrypt,
	callDigest: opDigest, callDigestUpdate: opDigest, callDigestKey: opDigest, callDigestFinal: opDigest,
	callSign: opSign, callSignUpdate: opSign, callSignFinal: opSign,
	callVerify: opVerify, callVerifyUpdate: opVerify, callVerifyFinal: opVerify,
}

// tooLong is the answer to a frame of olen+blen bytes, longer than the
// front takes, whose body starts with head: the refusal is recorded, and
// the call gets the error keywarden's module returns for a call it finds
// too long to send (its data out of range, or its ciphertext, wrapped
// key, signature; a mechanism parameter for a C_*Init; CKR_ARGUMENTS_BAD
// for the others). A call of an operation ends it, as every failure of
// such a call does. A body that names no call is CKR_DEVICE_ERROR, as a
// malformed request.
func (c *conn) tooLong(head []byte, olen, blen uint32) []byte {
	d := &decoder{b: head}
	id := d.u32()
	sig, ok := d.array()
	if d.err != nil || !ok || id == callError || id >= callMax || string(sig) != calls[id].req {
		c.refuse("request", nil, wire.Status_STATUS_RESOURCE_EXHAUSTED,
			fmt.Sprintf("a frame of %d+%d bytes (at most %d+%d)", olen, blen, maxOptions, maxBody))
		return errorResponse(ckrDeviceError)
	}
	c.refuse("request", nil, wire.Status_STATUS_RESOURCE_EXHAUSTED,
		fmt.Sprintf("%s of %d+%d bytes (at most %d+%d)", calls[id].name, olen, blen, maxOptions, maxBody))
	if !c.initialized {
		return errorResponse(ckrCryptokiNotInitialized)
	}
	if handlers[id] == nil {
		return errorResponse(ckrFunctionNotSupported)
	}
	if kind, ok := opOfCall[int(id)]; ok {
		d.sig = calls[id].req
		if h := d.Ulong(); d.err == nil {
			c.refused(h, kind)
		}
	}
	return errorResponse(tooLongRV(int(id)))
}

// tooLongRV is what a call too long to take returns (tooLong).
func tooLongRV(id int) uint64 {
	switch id {
	case callDecrypt, callDecryptUpdate:
		return ckrEncryptedDataLenRange
	case callUnwrapKey:
		return ckrWrappedKeyLenRange
	case callVerifyFinal:
		return ckrSignatureLenRange
	case callEncrypt, callEncryptUpdate, callSign, callSignUpdate, callVerify, callVerifyUpdate, callDigest, callDigestUpdate:
		return ckrDataLenRange
	case callEncryptInit, callDecryptInit, callDigestInit, callSignInit, callVerifyInit, callDeriveKey:
		return ckrMechanismParamInvalid
	}
	return ckrArgumentsBad
}
