"""The transit paths with hvac, as a Python program would use them.

Usage: hvac_transit.py unix SOCKET
       hvac_transit.py https URL CA CERT KEY

Exits 0 and prints "hvac: all passed" when every step worked.
"""

import base64
import hashlib
import os
import sys
import urllib.parse

import hvac
import hvac.exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.b64encode(b).decode()


def client():
    if sys.argv[1] == "unix":
        import requests_unixsocket

        url = "http+unix://" + urllib.parse.quote(sys.argv[2], safe="")
        return hvac.Client(url=url, token="ignored", session=requests_unixsocket.Session())
    _, _, url, ca, cert, key = sys.argv
    return hvac.Client(url=url, token="ignored", verify=ca, cert=(cert, key))


def main():
    c = client()
    t = c.secrets.transit

    # Create, encrypt and decrypt, single and batch.
    t.create_key("py", key_type="aes256-gcm96")
    ct1 = t.encrypt_data("py", b64("hello from python"))["data"]["ciphertext"]
    assert ct1.startswith("vault:v1:"), ct1
    pt = t.decrypt_data("py", ct1)["data"]["plaintext"]
    assert base64.b64decode(pt) == b"hello from python"
    batch = [{"plaintext": b64("item %d" % i)} for i in range(20)]
    res = t.encrypt_data("py", "", batch_input=batch)["data"]["batch_results"]
    assert len(res) == 20

    # Rotate, old ciphertexts decrypt, rewrap, min_decryption_version.
    t.rotate_key("py")
    assert t.read_key("py")["data"]["latest_version"] == 2
    dec = t.decrypt_data("py", "", batch_input=[{"ciphertext": r["ciphertext"]} for r in res])["data"]["batch_results"]
    for i, r in enumerate(dec):
        assert base64.b64decode(r["plaintext"]) == b"item %d" % i, r
    ct2 = t.rewrap_data("py", ct1)["data"]["ciphertext"]
    assert ct2.startswith("vault:v2:"), ct2
    t.update_key_configuration("py", min_decryption_version=2)
    try:
        t.decrypt_data("py", ct1)
        raise AssertionError("a retired version decrypted")
    except hvac.exceptions.InvalidRequest:
        pass
    assert base64.b64decode(t.decrypt_data("py", ct2)["data"]["plaintext"]) == b"hello from python"

    # Data keys.
    dk = t.generate_data_key("py", key_type="plaintext", bits=256)["data"]
    assert t.decrypt_data("py", dk["ciphertext"])["data"]["plaintext"] == dk["plaintext"]

    # Sign and verify with every key type and marshaling.
    for kt in ("ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048"):
        t.create_key("sig-" + kt, key_type=kt)
        algs = ["pss", "pkcs1v15"] if kt.startswith("rsa") else [None]
        for alg in algs:
            for m in ("asn1", "jws"):
                sig = t.sign_data("sig-" + kt, b64("py release"), hash_algorithm="sha2-256",
                                  signature_algorithm=alg, marshaling_algorithm=m)["data"]["signature"]
                ok = t.verify_signed_data("sig-" + kt, b64("py release"), signature=sig, hash_algorithm="sha2-256",
                                          signature_algorithm=alg, marshaling_algorithm=m)["data"]["valid"]
                assert ok is True, (kt, alg, m)
                bad = t.verify_signed_data("sig-" + kt, b64("py release!"), signature=sig, hash_algorithm="sha2-256",
                                           signature_algorithm=alg, marshaling_algorithm=m)["data"]["valid"]
                assert bad is False, (kt, alg, m)

    # HMAC, hash, random.
    # hvac 0.11 predates the hmac key type: its adapter makes the key.
    c.adapter.post("/v1/transit/keys/mac", json={"type": "hmac"})
    tag = t.generate_hmac("mac", b64("m"))["data"]["hmac"]
    assert t.verify_signed_data("mac", b64("m"), hmac=tag)["data"]["valid"] is True
    assert t.hash_data(b64("m"), algorithm="sha2-256")["data"]["sum"] == hashlib.sha256(b"m").hexdigest()
    rnd = t.generate_random_bytes(n_bytes=16, output_format="hex")["data"]["random_bytes"]
    assert len(rnd) == 32

    # BYOK: wrap a key under the wrapping key (hvac 0.11 has no helper
    # for these paths: they go through its adapter).
    pem = c.adapter.get("/v1/transit/wrapping_key")["data"]["public_key"]
    wk = serialization.load_pem_public_key(pem.encode())
    target = os.urandom(32)
    kek = os.urandom(32)
    head = wk.encrypt(kek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    blob = head + aes_key_wrap_with_padding(kek, target)
    c.adapter.post("/v1/transit/keys/py-import/import", json={"ciphertext": b64(blob), "type": "aes256-gcm96"})
    ct = t.encrypt_data("py-import", b64("byok"))["data"]["ciphertext"]
    raw = base64.b64decode(ct.split(":")[2])
    assert AESGCM(target).decrypt(raw[:12], raw[12:], None) == b"byok"

    # Errors have Vault's shape and hvac's exceptions.
    try:
        t.decrypt_data("py", "vault:v1:%%%")
        raise AssertionError("bad base64 accepted")
    except hvac.exceptions.InvalidRequest as e:
        assert "base64" in str(e), e
    try:
        t.read_key("nope")
        raise AssertionError("a missing key read")
    except hvac.exceptions.InvalidPath:
        pass

    keys = t.list_keys()["data"]["keys"]
    assert "py" in keys and "py-import" in keys, keys
    t.delete_key("py")
    print("hvac: all passed")


if __name__ == "__main__":
    main()
