/*
 * p11client: loads a PKCS #11 module as programs do and exercises what
 * the PKCS #11 tests need of a real C host process: threads, fork,
 * C_Finalize and C_Initialize again, dlclose and reload, a daemon that
 * goes away and comes back. It prints one line per check and exits 0 if
 * all passed.
 *
 *   p11client MODULE threads N      N threads, each with its own session, sign 50 times
 *   p11client MODULE fork           the parent signs; a child calls C_Initialize again and signs;
 *                                   a child of the fork system call (no atfork handlers) finds
 *                                   the module not initialized
 *   p11client MODULE reinit         C_Finalize, C_Initialize, sign; dlclose, dlopen, sign
 *   p11client MODULE restart FILE   sign; wait until FILE exists (the daemon restarted); sign again
 *                                   (with SIGPIPE ignored)
 *   p11client MODULE nodaemon       C_Initialize succeeds and shows no token
 *   p11client MODULE refused PIN    slot 0's socket is one the module must refuse: C_Initialize
 *                                   succeeds, the slot shows no token and opens no session;
 *                                   were one opened, C_Login sends PIN and C_Verify is tried
 *   p11client MODULE daemonize FILE the parent signs and forks; the child closes descriptors 3 to
 *                                   63, opens FILE on all of them (as a daemonizing program
 *                                   reuses the numbers), calls C_Initialize, signs, and writes a
 *                                   line to FILE through each descriptor
 *   p11client MODULE edparams       CKM_EDDSA with CK_EDDSA_PARAMS: pure Ed25519 signs; Ed25519ph
 *                                   and a context are refused
 *   p11client MODULE initrace N     N rounds of two threads calling C_SignInit on one session at
 *                                   once, with the Ed25519 keys "edA" (not used before on the
 *                                   connection) and "edB" (used just before): one of them gets
 *                                   CKR_OK, and C_Sign signs with its key
 *   p11client MODULE finrace N      N rounds of: C_Initialize, 4 threads digesting in a loop,
 *                                   C_Finalize while they wait for replies; the threads end
 *                                   once their calls return CKR_CRYPTOKI_NOT_INITIALIZED
 *   p11client MODULE workload       many calls, results ignored: for replies a test corrupts
 *                                   (the module must never crash on them)
 *   p11client MODULE rsaaes BLOB    CKM_RSA_AES_KEY_WRAP with the RSA key "kek-rsa": wraps "ed-w",
 *                                   unwraps it again, refuses what it must; unwraps BLOB as an
 *                                   HMAC-SHA-256 key and prints its tag of "abc" ("tag: HEX")
 *   p11client MODULE hkdf           CKM_HKDF_DERIVE from an HMAC key imported with a known value
 *                                   (0x5a repeated), salt "salt", info "info", into an HMAC-SHA-256
 *                                   key; prints its tag of "abc" ("tag: HEX"); refuses what it must
 *   p11client MODULE copy           C_CopyObject of the secret key "aes1" asking it exportable and
 *                                   wrappable, to wrap, or with nothing asked: refused
 *                                   (CKR_ACTION_PROHIBITED); aes1 unchanged
 *   p11client MODULE ecdh POINT     CKM_ECDH1_DERIVE from the ECDH key "dh1" with the peer's
 *                                   point (hex, uncompressed): CKD_SHA256_KDF with shared data
 *                                   "shared" into a 32-byte generic secret ("x963: HEX"), CKD_NULL
 *                                   with the point in an OCTET STRING ("raw: HEX"); refuses what
 *                                   it must
 *   p11client MODULE x25519 PEER    the X25519 key "xdh" is CKK_EC_MONTGOMERY with curve25519's
 *                                   OID and a 32-byte CKA_EC_POINT ("point: HEX"); CKM_ECDH1_DERIVE
 *                                   CKD_NULL with the peer's value (hex, 32 bytes) raw and in an
 *                                   OCTET STRING ("secret: HEX", "secret (DER): HEX"); a value of
 *                                   31 bytes refused; CKM_EC_MONTGOMERY_KEY_PAIR_GEN with the OID
 *                                   and with the name "curve25519"
 *   p11client MODULE bigcall        C_Digest of 2 MiB: CKR_DATA_LEN_RANGE, the digest ended, the
 *                                   session going on (any module: keywarden's, p11-kit's client)
 *   p11client MODULE slots          two slots (two daemons): each signs with its own key; a key
 *                                   handle of one slot is refused in a session of the other
 *   p11client MODULE edparams       CKM_EDDSA with CK_EDDSA_PARAMS: pure Ed25519 signs; Ed25519ph
 *                                   and a context are refused
 *   p11client MODULE workload       many calls, results ignored: for replies a test corrupts
 *                                   (the module must never crash on them)
 *   p11client MODULE rsaaes BLOB    CKM_RSA_AES_KEY_WRAP with the RSA key "kek-rsa": wraps "ed-w",
 *                                   unwraps it again, refuses what it must; unwraps BLOB as an
 *                                   HMAC-SHA-256 key and prints its tag of "abc" ("tag: HEX")
 *   p11client MODULE hkdf           CKM_HKDF_DERIVE from an HMAC key imported with a known value
 *                                   (0x5a repeated), salt "salt", info "info", into an HMAC-SHA-256
 *                                   key; prints its tag of "abc" ("tag: HEX"); refuses what it must
 *   p11client MODULE copy           C_CopyObject of the secret key "aes1" asking it exportable and
 *                                   wrappable, to wrap, or with nothing asked: refused
 *                                   (CKR_ACTION_PROHIBITED); aes1 unchanged
 *   p11client MODULE slots          two slots (two daemons): each signs with its own key; a key
 *                                   handle of one slot is refused in a session of the other
 *   p11client MODULE opstate        the rules of an operation's state, with C_*Init sent at once
 *                                   (a first use) and deferred to the next call (a key and
 *                                   mechanism used before): CKR_OPERATION_ACTIVE, a length query
 *                                   and a buffer too small keep the operation, an error and a
 *                                   result end it; a deferred C_SignInit whose key was destroyed
 *                                   meanwhile fails at C_Sign with CKR_KEY_HANDLE_INVALID
 *   p11client MODULE opfail         a refused call of an operation ends it (encrypt, decrypt,
 *                                   sign, verify, digest; C_*Init sent at once and deferred):
 *                                   bad arguments, data too long for the daemon, a C_*Update
 *                                   too long or with bad arguments, a C_*Init with a NULL
 *                                   mechanism, a wrong signature, junk to decrypt; after each,
 *                                   the next call is CKR_OPERATION_NOT_INITIALIZED and a new
 *                                   C_*Init succeeds
 *   p11client MODULE sizeq N        N times: C_SignInit (CKM_EDDSA, a session key), a length
 *                                   query, C_Sign; C_DigestInit (SHA-256), a length query,
 *                                   C_Digest; C_SignInit (CKM_ECDSA, a P-256 session key), a
 *                                   length query, C_Sign; C_EncryptInit (CKM_AES_GCM, an AES
 *                                   session key), a buffer too small, C_Encrypt (of 100 bytes
 *                                   and then 37, by turns)
 *   p11client MODULE bench PIN SECONDS THREADS
 *                                   operations per second, one call at a time per thread,
 *                                   each thread with its own session and session keys:
 *                                   ECDSA P-256 over a digest, Ed25519 of 64 bytes, HMAC-SHA-256
 *                                   and AES-256-GCM encryption of 256 bytes
 *
 * Signing uses the first EC private key with CKM_ECDSA over a SHA-256-long
 * digest, logging in with any PIN.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR load (const char *path, void **handle)
{
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR f = NULL;

	*handle = dlopen (path, RTLD_NOW | RTLD_LOCAL);
	if (*handle == NULL) {
		fprintf (stderr, "dlopen: %s\n", dlerror ());
		exit (2);
	}
	get = (CK_C_GetFunctionList) dlsym (*handle, "C_GetFunctionList");
	if (get == NULL || get (&f) != CKR_OK) {
		fprintf (stderr, "C_GetFunctionList failed\n");
		exit (2);
	}
	return f;
}

static CK_RV init (CK_FUNCTION_LIST_PTR f)
{
	CK_C_INITIALIZE_ARGS args;
	memset (&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	return f->C_Initialize (&args);
}

/* sign opens a session, logs in, finds the first EC private key and signs;
 * returns CKR_OK or the first failure. */
static CK_RV sign (CK_FUNCTION_LIST_PTR f, int times)
{
	CK_SLOT_ID slots[4];
	CK_ULONG n = 4, count = 0, siglen;
	CK_SESSION_HANDLE s;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_KEY_TYPE kt = CKK_EC;
	CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_KEY_TYPE, &kt, sizeof kt } };
	CK_OBJECT_HANDLE key;
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	CK_BYTE digest[32], sig[128];
	CK_RV rv;
	int i;

	memset (digest, 7, sizeof digest);
	if ((rv = f->C_GetSlotList (CK_TRUE, slots, &n)) != CKR_OK)
		return rv;
	if (n == 0)
		return CKR_TOKEN_NOT_PRESENT;
	if ((rv = f->C_OpenSession (slots[0], CKF_SERIAL_SESSION, NULL, NULL, &s)) != CKR_OK)
		return rv;
	rv = f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3);
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
		goto out;
	if ((rv = f->C_FindObjectsInit (s, tmpl, 2)) != CKR_OK)
		goto out;
	rv = f->C_FindObjects (s, &key, 1, &count);
	f->C_FindObjectsFinal (s);
	if (rv != CKR_OK)
		goto out;
	if (count == 0) {
		rv = CKR_KEY_HANDLE_INVALID;
		goto out;
	}
	for (i = 0; i < times; i++) {
		siglen = sizeof sig;
		if ((rv = f->C_SignInit (s, &mech, key)) != CKR_OK ||
		    (rv = f->C_Sign (s, digest, sizeof digest, sig, &siglen)) != CKR_OK)
			goto out;
		if (siglen != 64) {
			rv = CKR_GENERAL_ERROR;
			goto out;
		}
	}
out:
	f->C_CloseSession (s);
	return rv;
}

static int failed;

/* workload makes calls of every kind the module decodes a reply of,
 * ignoring what they return. */
static void workload (CK_FUNCTION_LIST_PTR f)
{
	CK_SLOT_ID slots[8];
	CK_ULONG n = 8, i, count = 0, len;
	CK_SLOT_INFO si;
	CK_TOKEN_INFO ti;
	CK_MECHANISM_TYPE mechs[64];
	CK_MECHANISM_INFO mi;
	CK_SESSION_HANDLE s = 0;
	CK_SESSION_INFO ssi;
	CK_OBJECT_HANDLE objs[16];
	CK_BYTE buf[600], out[600];
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 }, sha = { CKM_SHA256, NULL, 0 }, ed = { CKM_EDDSA, NULL, 0 };
	CK_C_INITIALIZE_ARGS args;

	memset (&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	memset (buf, 3, sizeof buf);
	f->C_Initialize (&args);
	f->C_GetSlotList (CK_TRUE, NULL, &n);
	n = 8;
	f->C_GetSlotList (CK_FALSE, slots, &n);
	f->C_GetSlotInfo (0, &si);
	f->C_GetTokenInfo (0, &ti);
	len = 0;
	f->C_GetMechanismList (0, NULL, &len);
	len = 64;
	f->C_GetMechanismList (0, mechs, &len);
	len = 2;
	f->C_GetMechanismList (0, mechs, &len);
	f->C_GetMechanismInfo (0, CKM_ECDSA, &mi);
	f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	f->C_GetSessionInfo (s, &ssi);
	f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3);
	f->C_FindObjectsInit (s, NULL, 0);
	f->C_FindObjects (s, objs, 16, &count);
	f->C_FindObjectsFinal (s);
	if (count > 16)
		count = 16;
	for (i = 0; i < count; i++) {
		CK_OBJECT_CLASS cls = 0;
		CK_KEY_TYPE kt = 0;
		CK_BBOOL sign = 0;
		CK_BYTE label[8], id[64], point[128], value[64];
		CK_ATTRIBUTE a[] = {
			{ CKA_CLASS, &cls, sizeof cls }, { CKA_KEY_TYPE, &kt, sizeof kt }, { CKA_LABEL, NULL, 0 },
			{ CKA_ID, id, sizeof id }, { CKA_SIGN, &sign, sizeof sign }, { CKA_EC_POINT, point, sizeof point },
			{ CKA_VALUE, value, sizeof value }, { CKA_LABEL, label, sizeof label },
		};
		f->C_GetAttributeValue (s, objs[i], a, 8);
		if (cls == CKO_PRIVATE_KEY) {
			CK_MECHANISM *m = kt == CKK_EC_EDWARDS ? &ed : &ecdsa;
			f->C_SignInit (s, m, objs[i]);
			len = 0;
			f->C_Sign (s, buf, 32, NULL, &len);
			len = sizeof out;
			f->C_Sign (s, buf, 32, out, &len);
			f->C_SignInit (s, m, objs[i]);
			len = 1;
			f->C_Sign (s, buf, 32, out, &len);
			len = sizeof out;
			f->C_Sign (s, buf, 32, out, &len);
		}
	}
	f->C_DigestInit (s, &sha);
	f->C_DigestUpdate (s, buf, sizeof buf);
	len = sizeof out;
	f->C_DigestFinal (s, out, &len);
	f->C_GenerateRandom (s, out, 32);
	f->C_CloseSession (s);
	f->C_CloseAllSessions (0);
	f->C_Finalize (NULL);
}

/* first_ec_key finds the first EC private key of a session. */
static CK_RV first_ec_key (CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *key)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_KEY_TYPE kt = CKK_EC;
	CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_KEY_TYPE, &kt, sizeof kt } };
	CK_ULONG count = 0;
	CK_RV rv;

	if ((rv = f->C_FindObjectsInit (s, tmpl, 2)) != CKR_OK)
		return rv;
	rv = f->C_FindObjects (s, key, 1, &count);
	f->C_FindObjectsFinal (s);
	if (rv == CKR_OK && count != 1)
		rv = CKR_KEY_HANDLE_INVALID;
	return rv;
}

/* find finds the object of class cls labelled label. */
static CK_RV find (CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label, CK_OBJECT_HANDLE *o)
{
	CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_LABEL, (void *) label, strlen (label) } };
	CK_ULONG count = 0;
	CK_RV rv;

	if ((rv = f->C_FindObjectsInit (s, tmpl, 2)) != CKR_OK)
		return rv;
	rv = f->C_FindObjects (s, o, 1, &count);
	f->C_FindObjectsFinal (s);
	if (rv == CKR_OK && count != 1)
		rv = CKR_OBJECT_HANDLE_INVALID;
	return rv;
}

/* sign_once signs a digest with an EC key. */
static CK_RV sign_once (CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	CK_BYTE digest[32], sig[128];
	CK_ULONG siglen = sizeof sig;
	CK_RV rv;

	memset (digest, 9, sizeof digest);
	if ((rv = f->C_SignInit (s, &mech, key)) != CKR_OK)
		return rv;
	return f->C_Sign (s, digest, sizeof digest, sig, &siglen);
}

static void check (const char *what, CK_RV rv, CK_RV want)
{
	printf ("%s: %s (rv 0x%lx)\n", what, rv == want ? "ok" : "FAILED", (unsigned long) rv);
	if (rv != want)
		failed = 1;
}

/* opstate_sign checks the state rules of one signing operation on key
 * with mech over 32 bytes; its C_SignInit is sent at once the first time
 * (first is set) and deferred after. */
static void opstate_sign (CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key,
                          CK_ULONG siglen_want, const char *name)
{
	CK_BYTE data[32], sig[128];
	CK_ULONG len;
	char what[160];

	memset (data, 5, sizeof data);
#define CHECK(desc, expr, want) do { snprintf (what, sizeof what, "%s: %s", name, desc); check (what, (expr), (want)); } while (0)
	CHECK ("C_Sign before C_SignInit", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	CHECK ("C_SignInit", f->C_SignInit (s, mech, key), CKR_OK);
	CHECK ("C_SignInit again", f->C_SignInit (s, mech, key), CKR_OPERATION_ACTIVE);
	len = 0;
	CHECK ("a length query", f->C_Sign (s, data, sizeof data, NULL, &len), CKR_OK);
	CHECK ("the length", len, siglen_want);
	CHECK ("C_SignInit after a length query", f->C_SignInit (s, mech, key), CKR_OPERATION_ACTIVE);
	len = 1;
	CHECK ("a buffer too small", f->C_Sign (s, data, sizeof data, sig, &len), CKR_BUFFER_TOO_SMALL);
	CHECK ("the length asked", len, siglen_want);
	len = sizeof sig;
	CHECK ("C_Sign", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OK);
	CHECK ("the signature's length", len, siglen_want);
	len = sizeof sig;
	CHECK ("the operation ended with its result", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	/* An error ends it. */
	CHECK ("C_SignInit", f->C_SignInit (s, mech, key), CKR_OK);
	len = sizeof sig;
	if (mech->mechanism == CKM_ECDSA)
		CHECK ("a digest of 5 bytes", f->C_Sign (s, data, 5, sig, &len), CKR_DATA_LEN_RANGE);
	else
		CHECK ("C_SignUpdate after a length query",
		       (len = 0, f->C_Sign (s, data, sizeof data, NULL, &len), f->C_SignUpdate (s, data, 1)), CKR_OPERATION_ACTIVE);
	len = sizeof sig;
	CHECK ("the operation ended with the error", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	CHECK ("C_SignInit after the error", f->C_SignInit (s, mech, key), CKR_OK);
	len = sizeof sig;
	CHECK ("C_Sign", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OK);
	/* Two kinds of operation at once on one session. */
	CHECK ("C_SignInit", f->C_SignInit (s, mech, key), CKR_OK);
	CHECK ("C_DigestInit beside it", f->C_DigestInit (s, &(CK_MECHANISM) { CKM_SHA256, NULL, 0 }), CKR_OK);
	len = sizeof sig;
	CHECK ("C_Digest", f->C_Digest (s, data, sizeof data, sig, &len), CKR_OK);
	CHECK ("a SHA-256 digest", len, 32);
	len = sizeof sig;
	CHECK ("C_Sign", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OK);
#undef CHECK
}

static int opstate (CK_FUNCTION_LIST_PTR f)
{
	CK_SESSION_HANDLE s, s2;
	CK_OBJECT_HANDLE ec, pub, priv;
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 }, eddsa = { CKM_EDDSA, NULL, 0 }, gen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE pubt[] = { { CKA_EC_PARAMS, p256, sizeof p256 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_ATTRIBUTE privt[] = { { CKA_SIGN, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_BYTE data[32], sig[128];
	CK_ULONG len;
	int round;

	memset (data, 5, sizeof data);
	check ("C_Initialize", init (f), CKR_OK);
	check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
	check ("an EC key", first_ec_key (f, s, &ec), CKR_OK);
	/* A key of another type is refused by C_SignInit itself, the first
	 * time and every time. */
	for (round = 0; round < 2; round++)
		check ("CKM_EDDSA with an EC key", f->C_SignInit (s, &eddsa, ec), CKR_KEY_TYPE_INCONSISTENT);
	check ("a handle that is no key", f->C_SignInit (s, &ecdsa, ec + 1000), CKR_KEY_HANDLE_INVALID);
	/* The first round sends C_SignInit at once, the others defer it. */
	for (round = 0; round < 3; round++)
		opstate_sign (f, s, &ecdsa, ec, 64, round == 0 ? "first use" : "used before");
	/* CKM_EDDSA: a length query of a deferred C_SignInit is answered by
	 * the module; the rules are the same. */
	{
		CK_BYTE ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
		CK_MECHANISM edgen = { CKM_EC_EDWARDS_KEY_PAIR_GEN, NULL, 0 };
		CK_ATTRIBUTE edpub[] = { { CKA_EC_PARAMS, ed25519, sizeof ed25519 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
		CK_OBJECT_HANDLE epub, epriv;
		check ("an Ed25519 session key pair", f->C_GenerateKeyPair (s, &edgen, edpub, 3, privt, 2, &epub, &epriv), CKR_OK);
		for (round = 0; round < 3; round++)
			opstate_sign (f, s, &eddsa, epriv, 64, round == 0 ? "Ed25519, first use" : "Ed25519, used before");
	}
	/* A second session: its operations are its own. */
	check ("a second session", f->C_OpenSession (0, CKF_SERIAL_SESSION, NULL, NULL, &s2), CKR_OK);
	check ("C_SignInit in the first", f->C_SignInit (s, &ecdsa, ec), CKR_OK);
	check ("C_SignInit in the second", f->C_SignInit (s2, &ecdsa, ec), CKR_OK);
	len = sizeof sig;
	check ("C_Sign in the second", f->C_Sign (s2, data, sizeof data, sig, &len), CKR_OK);
	len = sizeof sig;
	check ("C_Sign in the first", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OK);
	check ("C_CloseSession of the second", f->C_CloseSession (s2), CKR_OK);
	/* A session key destroyed while a deferred C_SignInit waits: the
	 * daemon refuses the C_SignInit when it comes with C_Sign, which
	 * returns its error; no operation is then active. */
	check ("a session key pair", f->C_GenerateKeyPair (s, &gen, pubt, 3, privt, 2, &pub, &priv), CKR_OK);
	check ("C_SignInit (sent)", f->C_SignInit (s, &ecdsa, priv), CKR_OK);
	len = sizeof sig;
	check ("C_Sign", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OK);
	check ("C_SignInit (deferred)", f->C_SignInit (s, &ecdsa, priv), CKR_OK);
	check ("C_DestroyObject", f->C_DestroyObject (s, priv), CKR_OK);
	len = sizeof sig;
	check ("C_Sign returns the deferred C_SignInit's error", f->C_Sign (s, data, sizeof data, sig, &len), CKR_KEY_HANDLE_INVALID);
	len = sizeof sig;
	check ("no operation after it", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	check ("C_SignInit with the destroyed key", f->C_SignInit (s, &ecdsa, priv), CKR_KEY_HANDLE_INVALID);
	check ("C_SignInit with another", f->C_SignInit (s, &ecdsa, ec), CKR_OK);
	len = sizeof sig;
	check ("C_Sign", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OK);
	/* A deferred C_SignInit is forgotten with its session. */
	check ("C_SignInit (deferred)", f->C_SignInit (s, &ecdsa, ec), CKR_OK);
	check ("C_CloseSession", f->C_CloseSession (s), CKR_OK);
	len = sizeof sig;
	check ("C_Sign in the closed session", f->C_Sign (s, data, sizeof data, sig, &len), CKR_SESSION_HANDLE_INVALID);
	check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	return failed;
}

/* opfail: what a refused call of an operation leaves (PKCS #11 v2.40,
 * 5.2: a call that fails ends its operation, except
 * CKR_BUFFER_TOO_SMALL; C_Verify and C_VerifyFinal always end it), for
 * the five kinds, each with its C_*Init sent at once (round 0) and
 * deferred (round 1). */
enum { F_ENC, F_DEC, F_SIGN, F_VER, F_DIG, F_KINDS };
static const char *const fname[F_KINDS] = { "encrypt", "decrypt", "sign", "verify", "digest" };
static CK_FUNCTION_LIST_PTR ff;
static CK_MECHANISM_PTR fmech[F_KINDS];
static CK_OBJECT_HANDLE fkey[F_KINDS];

static CK_RV f_init (int k, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m)
{
	switch (k) {
	case F_ENC: return ff->C_EncryptInit (s, m, fkey[k]);
	case F_DEC: return ff->C_DecryptInit (s, m, fkey[k]);
	case F_SIGN: return ff->C_SignInit (s, m, fkey[k]);
	case F_VER: return ff->C_VerifyInit (s, m, fkey[k]);
	}
	return ff->C_DigestInit (s, m);
}

/* f_call is the kind's one-shot call on in[0..n) (C_Verify: with a
 * signature of 32 zeros), with outlen as given. */
static CK_RV f_call (int k, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_ULONG_PTR outlen)
{
	static CK_BYTE out[4096];
	switch (k) {
	case F_ENC: return ff->C_Encrypt (s, in, n, out, outlen);
	case F_DEC: return ff->C_Decrypt (s, in, n, out, outlen);
	case F_SIGN: return ff->C_Sign (s, in, n, out, outlen);
	case F_VER: memset (out, 0, 32); return ff->C_Verify (s, in, n, out, 32);
	}
	return ff->C_Digest (s, in, n, out, outlen);
}

static CK_RV f_update (int k, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n)
{
	static CK_BYTE out[4096];
	CK_ULONG len = sizeof out;
	switch (k) {
	case F_ENC: return ff->C_EncryptUpdate (s, in, n, out, &len);
	case F_DEC: return ff->C_DecryptUpdate (s, in, n, out, &len);
	case F_SIGN: return ff->C_SignUpdate (s, in, n);
	case F_VER: return ff->C_VerifyUpdate (s, in, n);
	}
	return ff->C_DigestUpdate (s, in, n);
}

/* f_ended checks that the kind's operation has ended: its next call is
 * CKR_OPERATION_NOT_INITIALIZED, a new C_*Init succeeds (not
 * CKR_OPERATION_ACTIVE), and the new operation's call runs. */
static void f_ended (int k, CK_SESSION_HANDLE s, const char *after, int round)
{
	CK_BYTE data[32];
	CK_ULONG len = 4096;
	CK_RV rv;
	char what[160];

	memset (data, 9, sizeof data);
	snprintf (what, sizeof what, "%s, round %d, after %s: the operation's next call", fname[k], round, after);
	check (what, f_call (k, s, data, sizeof data, &len), CKR_OPERATION_NOT_INITIALIZED);
	snprintf (what, sizeof what, "%s, round %d, after %s: a new C_*Init", fname[k], round, after);
	check (what, f_init (k, s, fmech[k]), CKR_OK);
	len = 4096;
	rv = f_call (k, s, data, sizeof data, &len);
	snprintf (what, sizeof what, "%s, round %d, after %s: the new operation's call runs", fname[k], round, after);
	check (what, rv != CKR_OPERATION_ACTIVE && rv != CKR_OPERATION_NOT_INITIALIZED, CK_TRUE);
}

static int opfail (CK_FUNCTION_LIST_PTR f)
{
	size_t big = (1u << 20) + 1;
	CK_BYTE_PTR huge = calloc (1, big);
	CK_BYTE iv[12] = {0}, data[32];
	CK_GCM_PARAMS gcm = { iv, sizeof iv, 96, NULL, 0, 128 };
	CK_MECHANISM mgcm = { CKM_AES_GCM, &gcm, sizeof gcm }, agen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_MECHANISM hmac = { CKM_SHA256_HMAC, NULL, 0 }, sha = { CKM_SHA256, NULL, 0 };
	CK_MECHANISM ggen = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 }, none = { 0xffffffff, NULL, 0 };
	CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
	CK_KEY_TYPE aes = CKK_AES, gen = CKK_GENERIC_SECRET;
	CK_ULONG len32 = 32, len;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE aest[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &aes, sizeof aes },
		{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_ENCRYPT, &yes, 1 }, { CKA_DECRYPT, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_ATTRIBUTE mact[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
		{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_SIGN, &yes, 1 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE ak, mk;
	char what[160];
	int k, round;

	ff = f;
	memset (data, 5, sizeof data);
	check ("C_Initialize", init (f), CKR_OK);
	check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
	check ("an AES key", f->C_GenerateKey (s, &agen, aest, 6, &ak), CKR_OK);
	check ("an HMAC key", f->C_GenerateKey (s, &ggen, mact, 6, &mk), CKR_OK);
	fmech[F_ENC] = fmech[F_DEC] = &mgcm;
	fmech[F_SIGN] = fmech[F_VER] = &hmac;
	fmech[F_DIG] = &sha;
	fkey[F_ENC] = fkey[F_DEC] = ak;
	fkey[F_SIGN] = fkey[F_VER] = mk;
	for (round = 0; round < 2; round++) {
		for (k = 0; k < F_KINDS; k++) {
			/* Bad arguments, refused by the module. */
			snprintf (what, sizeof what, "%s, round %d: C_*Init", fname[k], round);
			check (what, f_init (k, s, fmech[k]), CKR_OK);
			snprintf (what, sizeof what, "%s, round %d: a call with bad arguments", fname[k], round);
			check (what, f_call (k, s, NULL, 5, &len), CKR_ARGUMENTS_BAD);
			f_ended (k, s, "bad arguments", round);
			/* Data longer than the daemon takes, refused by the module. */
			check ("C_*Init", f_init (k, s, fmech[k]), CKR_OK);
			len = 4096;
			snprintf (what, sizeof what, "%s, round %d: a call too long", fname[k], round);
			check (what, f_call (k, s, huge, big, &len), k == F_DEC ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE);
			f_ended (k, s, "a call too long", round);
			/* A C_*Update too long, first and after another. */
			check ("C_*Init", f_init (k, s, fmech[k]), CKR_OK);
			snprintf (what, sizeof what, "%s, round %d: a C_*Update too long", fname[k], round);
			check (what, f_update (k, s, huge, big), k == F_DEC ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE);
			f_ended (k, s, "a C_*Update too long", round);
			check ("C_*Init", f_init (k, s, fmech[k]), CKR_OK);
			snprintf (what, sizeof what, "%s, round %d: a C_*Update", fname[k], round);
			check (what, f_update (k, s, data, sizeof data), CKR_OK);
			snprintf (what, sizeof what, "%s, round %d: a C_*Update with bad arguments", fname[k], round);
			check (what, f_update (k, s, NULL, 5), CKR_ARGUMENTS_BAD);
			f_ended (k, s, "a C_*Update with bad arguments", round);
			/* A C_*Init with a NULL mechanism ends the operation. */
			check ("C_*Init", f_init (k, s, fmech[k]), CKR_OK);
			snprintf (what, sizeof what, "%s, round %d: C_*Init with a NULL mechanism", fname[k], round);
			check (what, f_init (k, s, NULL), CKR_OK);
			f_ended (k, s, "C_*Init with a NULL mechanism", round);
			/* The type the module sends for a NULL_PTR mechanism is
			 * no mechanism: a program's C_*Init of it starts nothing,
			 * and says so. */
			snprintf (what, sizeof what, "%s, round %d: C_*Init of mechanism 0xffffffff", fname[k], round);
			check (what, f_init (k, s, &none), CKR_MECHANISM_INVALID);
			f_ended (k, s, "C_*Init of mechanism 0xffffffff", round);
		}
		/* The daemon's refusals: a signature that does not verify, a
		 * ciphertext that does not open. */
		check ("C_VerifyInit", f_init (F_VER, s, &hmac), CKR_OK);
		len = 0;
		check ("C_Verify of a wrong signature", f_call (F_VER, s, data, sizeof data, &len), CKR_SIGNATURE_INVALID);
		f_ended (F_VER, s, "a wrong signature", round);
		check ("C_DecryptInit", f_init (F_DEC, s, &mgcm), CKR_OK);
		len = sizeof data;
		check ("C_Decrypt of junk", f_call (F_DEC, s, data, sizeof data, &len), CKR_ENCRYPTED_DATA_INVALID);
		f_ended (F_DEC, s, "junk to decrypt", round);
		/* A length query keeps the operation. */
		check ("C_SignInit", f_init (F_SIGN, s, &hmac), CKR_OK);
		len = 0;
		check ("C_Sign, a length query", f->C_Sign (s, data, sizeof data, NULL, &len), CKR_OK);
		len = 4096;
		check ("C_Sign after it", f_call (F_SIGN, s, data, sizeof data, &len), CKR_OK);
	}
	check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	free (huge);
	return failed;
}

/* sizeq signs, digests and encrypts n times, each after a length query
 * (a buffer too small for the encryptions). */
static int sizeq (CK_FUNCTION_LIST_PTR f, int n)
{
	CK_SESSION_HANDLE s;
	CK_BYTE ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
	CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG len32 = 32;
	CK_MECHANISM edgen = { CKM_EC_EDWARDS_KEY_PAIR_GEN, NULL, 0 }, eddsa = { CKM_EDDSA, NULL, 0 }, sha = { CKM_SHA256, NULL, 0 };
	CK_MECHANISM ecgen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 }, ecdsa = { CKM_ECDSA, NULL, 0 }, aesgen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_BYTE iv[12] = { 0 };
	CK_GCM_PARAMS gcmp = { iv, sizeof iv, 96, NULL, 0, 128 };
	CK_MECHANISM gcm = { CKM_AES_GCM, &gcmp, sizeof gcmp };
	CK_ATTRIBUTE pubt[] = { { CKA_EC_PARAMS, ed25519, sizeof ed25519 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_ATTRIBUTE ecpubt[] = { { CKA_EC_PARAMS, p256, sizeof p256 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_ATTRIBUTE privt[] = { { CKA_SIGN, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_ATTRIBUTE aest[] = { { CKA_ENCRYPT, &yes, 1 }, { CKA_DECRYPT, &yes, 1 }, { CKA_TOKEN, &no, 1 },
	                        { CKA_VALUE_LEN, &len32, sizeof len32 } };
	CK_OBJECT_HANDLE pub, priv, ecpub, ecpriv, aes;
	CK_BYTE data[128], out[256];
	CK_ULONG len, want, inlen;
	int i;

	memset (data, 6, sizeof data);
	check ("C_Initialize", init (f), CKR_OK);
	check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
	check ("an Ed25519 session key pair", f->C_GenerateKeyPair (s, &edgen, pubt, 3, privt, 2, &pub, &priv), CKR_OK);
	check ("a P-256 session key pair", f->C_GenerateKeyPair (s, &ecgen, ecpubt, 3, privt, 2, &ecpub, &ecpriv), CKR_OK);
	check ("an AES session key", f->C_GenerateKey (s, &aesgen, aest, 4, &aes), CKR_OK);
	for (i = 0; i < n && !failed; i++) {
		CK_RV rv;
		len = 0;
		if ((rv = f->C_SignInit (s, &eddsa, priv)) != CKR_OK || (rv = f->C_Sign (s, data, sizeof data, NULL, &len)) != CKR_OK ||
		    len != 64 || (rv = f->C_Sign (s, data, sizeof data, out, &len)) != CKR_OK || len != 64)
			check ("sign after a length query", rv, CKR_OK + (rv == CKR_OK));
		len = 0;
		if ((rv = f->C_DigestInit (s, &sha)) != CKR_OK || (rv = f->C_Digest (s, data, 32, NULL, &len)) != CKR_OK ||
		    len != 32 || (rv = f->C_Digest (s, data, 32, out, &len)) != CKR_OK || len != 32)
			check ("digest after a length query", rv, CKR_OK + (rv == CKR_OK));
		/* P-256: r || s, 64 bytes. */
		len = 0;
		if ((rv = f->C_SignInit (s, &ecdsa, ecpriv)) != CKR_OK || (rv = f->C_Sign (s, data, 32, NULL, &len)) != CKR_OK ||
		    len != 64 || (rv = f->C_Sign (s, data, 32, out, &len)) != CKR_OK || len != 64)
			check ("ECDSA signature after a length query", rv, CKR_OK + (rv == CKR_OK));
		/* AES-GCM: keywarden's format, the data and 35 bytes ('K' 'W'
		 * 0x01, the key's version, the nonce, the tag); a buffer too
		 * small says so. */
		inlen = i % 2 ? 37 : 100;
		want = inlen + 35;
		len = 16;
		if ((rv = f->C_EncryptInit (s, &gcm, aes)) != CKR_OK || (rv = f->C_Encrypt (s, data, inlen, out, &len)) != CKR_BUFFER_TOO_SMALL ||
		    len != want || (rv = f->C_Encrypt (s, data, inlen, out, &len)) != CKR_OK || len != want) {
			fprintf (stderr, "AES-GCM encryption of %lu bytes after a buffer too small: 0x%lx, %lu bytes (want %lu)\n",
			         (unsigned long) inlen, (unsigned long) rv, (unsigned long) len, (unsigned long) want);
			failed = 1;
		}
	}
	check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	return failed;
}

static CK_FUNCTION_LIST_PTR shared;

/* initrace: the second thread's C_SignInit, after a delay that changes
 * from round to round, so that it falls anywhere in the first's round
 * trip. */
static struct {
	pthread_barrier_t go, done;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE key;
	long delay_ns;
	CK_RV rv;
	int stop;
} race;

static void spin (long ns)
{
	struct timespec a, b;
	clock_gettime (CLOCK_MONOTONIC, &a);
	do
		clock_gettime (CLOCK_MONOTONIC, &b);
	while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < ns);
}

static void *init_racer (void *arg)
{
	CK_MECHANISM eddsa = { CKM_EDDSA, NULL, 0 };
	(void) arg;
	for (;;) {
		pthread_barrier_wait (&race.go);
		if (race.stop)
			return NULL;
		spin (race.delay_ns);
		race.rv = shared->C_SignInit (race.s, &eddsa, race.key);
		pthread_barrier_wait (&race.done);
	}
}

/* finrace: a thread digesting until the module is finalized. */
static int digesters_started;

static void *digester (void *arg)
{
	CK_SESSION_HANDLE s;
	CK_MECHANISM sha = { CKM_SHA256, NULL, 0 };
	long n = 0;
	(void) arg;
	if (shared->C_OpenSession (0, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
		return (void *) -1L;
	for (;;) {
		CK_BYTE out[64];
		CK_ULONG len = sizeof out;
		CK_RV rv = shared->C_DigestInit (s, &sha);
		if (rv == CKR_OK)
			rv = shared->C_Digest (s, (CK_BYTE_PTR) "abc", 3, out, &len);
		if (rv == CKR_CRYPTOKI_NOT_INITIALIZED)
			return (void *) n;
		if (n++ == 0)
			__atomic_add_fetch (&digesters_started, 1, __ATOMIC_SEQ_CST);
	}
}

static int finrace (CK_FUNCTION_LIST_PTR f, int rounds)
{
	int round, i;

	shared = f;
	for (round = 0; round < rounds && !failed; round++) {
		pthread_t th[4];
		check ("C_Initialize", init (f), CKR_OK);
		__atomic_store_n (&digesters_started, 0, __ATOMIC_SEQ_CST);
		for (i = 0; i < 4; i++)
			pthread_create (&th[i], NULL, digester, NULL);
		/* Finalize while every thread is in its loop of calls: wait
		 * (up to 30 s on a busy machine) until each has digested once,
		 * then a little longer, more each round. */
		for (i = 0; i < 3000 && __atomic_load_n (&digesters_started, __ATOMIC_SEQ_CST) < 4; i++)
			usleep (10000);
		usleep (round * 10000);
		check ("C_Finalize while threads wait for replies", f->C_Finalize (NULL), CKR_OK);
		for (i = 0; i < 4; i++) {
			void *r;
			pthread_join (th[i], &r);
			check ("a thread digested, then saw the module finalized", (long) r > 0 ? CKR_OK : CKR_GENERAL_ERROR, CKR_OK);
		}
	}
	return failed;
}

static int initrace (CK_FUNCTION_LIST_PTR f, int rounds)
{
	CK_SESSION_HANDLE s, s2;
	CK_OBJECT_HANDLE a, b;
	CK_MECHANISM eddsa = { CKM_EDDSA, NULL, 0 };
	CK_OBJECT_CLASS data = CKO_DATA;
	CK_ATTRIBUTE cls = { CKA_CLASS, &data, sizeof data };
	CK_BYTE msg[] = "message", siga[64], sigb[64], sig[64];
	CK_ULONG len;
	pthread_t th;
	int round, both = 0, wrong = 0, none = 0;

	check ("C_Initialize", init (f), CKR_OK);
	check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	check ("a second session", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s2), CKR_OK);
	check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
	check ("edA", find (f, s, CKO_PRIVATE_KEY, "edA", &a), CKR_OK);
	check ("edB", find (f, s, CKO_PRIVATE_KEY, "edB", &b), CKR_OK);
	len = 64;
	check ("edA signs", f->C_SignInit (s2, &eddsa, a) == CKR_OK ? f->C_Sign (s2, msg, sizeof msg, siga, &len) : 1, CKR_OK);
	len = 64;
	check ("edB signs", f->C_SignInit (s2, &eddsa, b) == CKR_OK ? f->C_Sign (s2, msg, sizeof msg, sigb, &len) : 1, CKR_OK);
	if (failed)
		return failed;
	shared = f;
	race.s = s;
	race.key = b;
	pthread_barrier_init (&race.go, NULL, 2);
	pthread_barrier_init (&race.done, NULL, 2);
	pthread_create (&th, NULL, init_racer, NULL);
	for (round = 0; round < rounds; round++) {
		CK_RV rva;
		/* Forget what the daemon accepted (a C_SetAttributeValue does,
		 * even refused): edA's C_SignInit is then sent at once; then
		 * have edB accepted again, so that its C_SignInit is deferred. */
		f->C_SetAttributeValue (s2, a, &cls, 1);
		len = 64;
		if (f->C_SignInit (s2, &eddsa, b) != CKR_OK || f->C_Sign (s2, msg, sizeof msg, sig, &len) != CKR_OK) {
			check ("edB signs", 1, CKR_OK);
			break;
		}
		race.delay_ns = (round % 50) * 3000;
		pthread_barrier_wait (&race.go);
		rva = f->C_SignInit (s, &eddsa, a);
		pthread_barrier_wait (&race.done);
		len = 64;
		if (rva == CKR_OK && race.rv == CKR_OK) {
			both++;
			f->C_Sign (s, msg, sizeof msg, sig, &len);
		} else if (rva != CKR_OK && race.rv != CKR_OK) {
			none++;
		} else {
			CK_RV rv = f->C_Sign (s, msg, sizeof msg, sig, &len);
			if (rv != CKR_OK || len != 64 || memcmp (sig, rva == CKR_OK ? siga : sigb, 64) != 0)
				wrong++;
		}
	}
	race.stop = 1;
	pthread_barrier_wait (&race.go);
	pthread_join (th, NULL);
	printf ("%d rounds: both C_SignInit CKR_OK %d times, neither %d times, a signature not of the key that got CKR_OK %d times\n",
	        rounds, both, none, wrong);
	check ("two C_SignInit at once both accepted", both != 0, CK_FALSE);
	check ("neither C_SignInit accepted", none != 0, CK_FALSE);
	check ("C_Sign with the key of the other C_SignInit", wrong != 0, CK_FALSE);
	check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	return failed;
}

/* endrace: a thread ends the session's signature (a C_SignInit with a
 * NULL_PTR mechanism) while another starts one and signs, deferred or
 * not: every C_Sign that succeeds signs with the key, the others find no
 * operation, and the session is sound after. */
static void *end_racer (void *arg)
{
	(void) arg;
	for (;;) {
		pthread_barrier_wait (&race.go);
		if (race.stop)
			return NULL;
		spin (race.delay_ns);
		race.rv = shared->C_SignInit (race.s, NULL, 0);
		pthread_barrier_wait (&race.done);
	}
}

static int endrace (CK_FUNCTION_LIST_PTR f, int rounds)
{
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE a;
	CK_MECHANISM eddsa = { CKM_EDDSA, NULL, 0 };
	CK_OBJECT_CLASS data = CKO_DATA;
	CK_ATTRIBUTE cls = { CKA_CLASS, &data, sizeof data };
	CK_BYTE msg[] = "message", siga[64], sig[64];
	CK_ULONG len;
	pthread_t th;
	int round, signed_ = 0, ended = 0, bad = 0, endbad = 0;

	check ("C_Initialize", init (f), CKR_OK);
	check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
	check ("edA", find (f, s, CKO_PRIVATE_KEY, "edA", &a), CKR_OK);
	len = 64;
	check ("edA signs", f->C_SignInit (s, &eddsa, a) == CKR_OK ? f->C_Sign (s, msg, sizeof msg, siga, &len) : 1, CKR_OK);
	if (failed)
		return failed;
	shared = f;
	race.s = s;
	race.stop = 0;
	pthread_barrier_init (&race.go, NULL, 2);
	pthread_barrier_init (&race.done, NULL, 2);
	pthread_create (&th, NULL, end_racer, NULL);
	for (round = 0; round < rounds; round++) {
		CK_RV rvi, rvs;
		/* Every other round the module forgets what the daemon
		 * accepted (a C_SetAttributeValue does, even refused): the
		 * C_SignInit is sent at once, else deferred to C_Sign. */
		if (round % 2 == 0)
			f->C_SetAttributeValue (s, a, &cls, 1);
		race.delay_ns = (round / 2 % 40) * 2000;
		pthread_barrier_wait (&race.go);
		rvi = f->C_SignInit (s, &eddsa, a);
		spin (30000);
		len = 64;
		memset (sig, 0, sizeof sig);
		rvs = f->C_Sign (s, msg, sizeof msg, sig, &len);
		pthread_barrier_wait (&race.done);
		if (race.rv != CKR_OK)
			endbad++;
		if (rvi == CKR_OK && rvs == CKR_OK && len == 64 && memcmp (sig, siga, 64) == 0)
			signed_++;
		else if (rvi == CKR_OK && rvs == CKR_OPERATION_NOT_INITIALIZED)
			ended++;
		else {
			if (bad < 5)
				printf ("round %d: C_SignInit %#lx, C_Sign %#lx, %lu bytes\n", round, rvi, rvs, len);
			bad++;
		}
		/* Whatever the order, no operation is left for the next round
		 * but one ended by the next NULL_PTR C_SignInit: end it here. */
		f->C_SignInit (s, NULL, 0);
	}
	race.stop = 1;
	pthread_barrier_wait (&race.go);
	pthread_join (th, NULL);
	printf ("%d rounds: signed %d times, the operation ended first %d times, else %d times\n", rounds, signed_, ended, bad);
	check ("a NULL_PTR C_SignInit that failed", endbad != 0, CK_FALSE);
	check ("a C_SignInit and C_Sign neither signing with the key nor finding the operation ended", bad != 0, CK_FALSE);
	len = 64;
	check ("C_SignInit after", f->C_SignInit (s, &eddsa, a), CKR_OK);
	check ("C_Sign after", f->C_Sign (s, msg, sizeof msg, sig, &len), CKR_OK);
	check ("the signature after", len == 64 && memcmp (sig, siga, 64) == 0, CK_TRUE);
	check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	return failed;
}

static void *worker (void *arg)
{
	(void) arg;
	return (void *) (long) sign (shared, 50);
}

int main (int argc, char **argv)
{
	void *h;
	CK_FUNCTION_LIST_PTR f;

	if (argc < 3)
		return 2;
	f = load (argv[1], &h);

	if (strcmp (argv[2], "threads") == 0 && argc == 4) {
		int n = atoi (argv[3]), i;
		pthread_t th[64];
		check ("C_Initialize", init (f), CKR_OK);
		shared = f;
		for (i = 0; i < n && i < 64; i++)
			pthread_create (&th[i], NULL, worker, NULL);
		for (i = 0; i < n && i < 64; i++) {
			void *r;
			pthread_join (th[i], &r);
			check ("thread signs 50 times", (CK_RV) (long) r, CKR_OK);
		}
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "fork") == 0) {
		pid_t pid;
		int st;
		check ("C_Initialize", init (f), CKR_OK);
		check ("parent signs", sign (f, 3), CKR_OK);
		fflush (stdout);
		pid = fork ();
		if (pid == 0) {
			CK_RV rv;
			CK_ULONG n = 0;
			/* The parent's connection is the parent's: the child
			 * must initialize the module first. */
			check ("child call before C_Initialize", f->C_GetSlotList (CK_TRUE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
			rv = init (f);
			check ("child C_Initialize", rv, CKR_OK);
			check ("child signs", sign (f, 3), CKR_OK);
			fflush (stdout);
			_exit (failed);
		}
		waitpid (pid, &st, 0);
		check ("child exits 0", WIFEXITED (st) ? (CK_RV) WEXITSTATUS (st) : 99, CKR_OK);
		/* A child of a fork that runs no pthread_atfork handler (the
		 * system call itself, as _Fork and a raw clone do) is not
		 * initialized either. */
		fflush (stdout);
		pid = syscall (SYS_fork);
		if (pid == 0) {
			CK_ULONG n = 0;
			check ("raw fork's child call before C_Initialize", f->C_GetSlotList (CK_TRUE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
			fflush (stdout);
			_exit (failed);
		}
		waitpid (pid, &st, 0);
		check ("raw fork's child exits 0", WIFEXITED (st) ? (CK_RV) WEXITSTATUS (st) : 99, CKR_OK);
		check ("parent signs after the fork", sign (f, 3), CKR_OK);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "reinit") == 0) {
		check ("C_Initialize", init (f), CKR_OK);
		check ("sign", sign (f, 1), CKR_OK);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
		check ("C_Initialize again", init (f), CKR_OK);
		check ("sign again", sign (f, 1), CKR_OK);
		check ("C_Finalize again", f->C_Finalize (NULL), CKR_OK);
		dlclose (h);
		f = load (argv[1], &h);
		check ("C_Initialize after reload", init (f), CKR_OK);
		check ("sign after reload", sign (f, 1), CKR_OK);
		check ("C_Finalize after reload", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "restart") == 0 && argc == 4) {
		CK_SESSION_HANDLE old, fresh;
		struct stat sb;
		int i;
		CK_RV rv;
		/* p11-kit's client writes to its socket with write(2): a request
		 * sent to a daemon that is gone raises SIGPIPE, which kills a
		 * program that does not ignore it (docs/pkcs11.md). */
		signal (SIGPIPE, SIG_IGN);
		check ("C_Initialize", init (f), CKR_OK);
		check ("sign", sign (f, 1), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION, NULL, NULL, &old), CKR_OK);
		printf ("waiting\n");
		fflush (stdout);
		for (i = 0; i < 300 && stat (argv[3], &sb) != 0; i++)
			usleep (100000);
		/* The daemon went away: a call fails, then the program works
		 * again with new sessions. A session of the connection that is
		 * gone stays refused, even where the new connection has a
		 * session with the same number in the daemon. */
		rv = sign (f, 1);
		printf ("sign across the restart: rv 0x%lx\n", (unsigned long) rv);
		check ("sign after the restart in new sessions", sign (f, 1), CKR_OK);
		check ("C_OpenSession after the restart", f->C_OpenSession (0, CKF_SERIAL_SESSION, NULL, NULL, &fresh), CKR_OK);
		check ("a session of the old connection", f->C_Login (old, CKU_USER, (CK_UTF8CHAR_PTR) "x", 1), CKR_SESSION_HANDLE_INVALID);
		check ("the old session's number differs", old != fresh, CK_TRUE);
		f->C_Finalize (NULL);
		check ("C_Initialize after the restart", init (f), CKR_OK);
		check ("sign after the restart", sign (f, 1), CKR_OK);
		f->C_Finalize (NULL);
	} else if (strcmp (argv[2], "edparams") == 0) {
		struct { CK_BBOOL ph; CK_ULONG n; CK_BYTE_PTR ctx; } pure = { CK_FALSE, 0, NULL }, ph = { CK_TRUE, 0, NULL },
			ctx = { CK_FALSE, 3, (CK_BYTE_PTR) "abc" };
		CK_MECHANISM m = { CKM_EDDSA, &pure, sizeof pure };
		CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
		CK_KEY_TYPE kt = CKK_EC_EDWARDS;
		CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_KEY_TYPE, &kt, sizeof kt } };
		CK_SESSION_HANDLE s;
		CK_OBJECT_HANDLE key;
		CK_ULONG count = 0, siglen;
		CK_BYTE sig[64];
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
		check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
		f->C_FindObjectsInit (s, tmpl, 2);
		f->C_FindObjects (s, &key, 1, &count);
		f->C_FindObjectsFinal (s);
		check ("an Ed25519 key", count, 1);
		check ("pure Ed25519 asked for", f->C_SignInit (s, &m, key), CKR_OK);
		siglen = sizeof sig;
		check ("signs", f->C_Sign (s, (CK_BYTE_PTR) "m", 1, sig, &siglen), CKR_OK);
		check ("a 64-byte signature", siglen, 64);
		m.pParameter = &ph;
		check ("Ed25519ph", f->C_SignInit (s, &m, key), CKR_MECHANISM_PARAM_INVALID);
		m.pParameter = &ctx;
		check ("Ed25519ctx", f->C_SignInit (s, &m, key), CKR_MECHANISM_PARAM_INVALID);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "sizeq") == 0 && argc == 4) {
		sizeq (f, atoi (argv[3]));
	} else if (strcmp (argv[2], "finrace") == 0 && argc == 4) {
		finrace (f, atoi (argv[3]));
	} else if (strcmp (argv[2], "initrace") == 0 && argc == 4) {
		initrace (f, atoi (argv[3]));
	} else if (strcmp (argv[2], "endrace") == 0 && argc == 4) {
		endrace (f, atoi (argv[3]));
	} else if (strcmp (argv[2], "opfail") == 0) {
		return opfail (f);
	} else if (strcmp (argv[2], "opstate") == 0) {
		opstate (f);
	} else if (strcmp (argv[2], "workload") == 0) {
		int round;
		for (round = 0; round < 2; round++)
			workload (f);
		return 0;
	} else if (strcmp (argv[2], "rsaaes") == 0 && argc == 4) {
		CK_RSA_PKCS_OAEP_PARAMS oaep = { CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0 };
		CK_RSA_PKCS_OAEP_PARAMS oaep1 = { CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0 };
		struct { CK_ULONG bits; CK_RSA_PKCS_OAEP_PARAMS *oaep; } p = { 256, &oaep };
		CK_MECHANISM m = { CKM_RSA_AES_KEY_WRAP, &p, sizeof p };
		CK_MECHANISM eddsa = { CKM_EDDSA, NULL, 0 }, hmac = { CKM_SHA256_HMAC, NULL, 0 };
		CK_OBJECT_CLASS sec = CKO_SECRET_KEY, pk = CKO_PRIVATE_KEY;
		CK_KEY_TYPE ed = CKK_EC_EDWARDS, gen = CKK_GENERIC_SECRET;
		CK_ULONG len32 = 32;
		CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
		CK_ATTRIBUTE edt[] = { { CKA_CLASS, &pk, sizeof pk }, { CKA_KEY_TYPE, &ed, sizeof ed },
			{ CKA_SENSITIVE, &no, 1 }, { CKA_EXTRACTABLE, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE hmt[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
			{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_TOKEN, &no, 1 } };
		CK_SESSION_HANDLE s;
		CK_OBJECT_HANDLE pub, priv, edw, edwpub, edfixed, data1, back, mk;
		CK_BYTE blob[2048], sig[64], tag[32], value[64], in[2048];
		CK_ULONG bloblen = sizeof blob, siglen = sizeof sig, taglen = sizeof tag, i;
		CK_ATTRIBUTE va = { CKA_VALUE, value, sizeof value };
		FILE *fp;
		size_t inlen;
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
		check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
		check ("kek-rsa's public key", find (f, s, CKO_PUBLIC_KEY, "kek-rsa", &pub), CKR_OK);
		check ("kek-rsa's private key", find (f, s, CKO_PRIVATE_KEY, "kek-rsa", &priv), CKR_OK);
		check ("ed-w", find (f, s, CKO_PRIVATE_KEY, "ed-w", &edw), CKR_OK);
		check ("ed-w's public key", find (f, s, CKO_PUBLIC_KEY, "ed-w", &edwpub), CKR_OK);
		check ("ed-fixed", find (f, s, CKO_PRIVATE_KEY, "ed-fixed", &edfixed), CKR_OK);
		check ("data1", find (f, s, CKO_SECRET_KEY, "data1", &data1), CKR_OK);
		check ("wrap ed-w", f->C_WrapKey (s, &m, pub, edw, blob, &bloblen), CKR_OK);
		check ("a blob longer than the RSA block", bloblen > 384, CK_TRUE);
		check ("unwrap it", f->C_UnwrapKey (s, &m, priv, blob, bloblen, edt, 5, &back), CKR_OK);
		check ("the copy's value, asked not sensitive", f->C_GetAttributeValue (s, back, &va, 1), CKR_ATTRIBUTE_SENSITIVE);
		check ("the copy signs", f->C_SignInit (s, &eddsa, back), CKR_OK);
		check ("", f->C_Sign (s, (CK_BYTE_PTR) "same key", 8, sig, &siglen), CKR_OK);
		check ("ed-w's public key verifies it", f->C_VerifyInit (s, &eddsa, edwpub), CKR_OK);
		check ("", f->C_Verify (s, (CK_BYTE_PTR) "same key", 8, sig, siglen), CKR_OK);
		bloblen = sizeof blob;
		check ("wrap an AES-256 key under RSA-3072 (weaker)", f->C_WrapKey (s, &m, pub, data1, blob, &bloblen) != CKR_OK, CK_TRUE);
		bloblen = sizeof blob;
		check ("wrap a key that is not wrappable", f->C_WrapKey (s, &m, pub, edfixed, blob, &bloblen) != CKR_OK, CK_TRUE);
		p.bits = 128;
		bloblen = sizeof blob;
		check ("wrap with AES-128 asked", f->C_WrapKey (s, &m, pub, edw, blob, &bloblen), CKR_MECHANISM_PARAM_INVALID);
		p.bits = 256;
		p.oaep = &oaep1;
		bloblen = sizeof blob;
		check ("wrap with OAEP SHA-1", f->C_WrapKey (s, &m, pub, edw, blob, &bloblen), CKR_MECHANISM_PARAM_INVALID);
		p.oaep = &oaep;
		check ("unwrap with the public key", f->C_UnwrapKey (s, &m, pub, blob, 296, edt, 5, &back), CKR_UNWRAPPING_KEY_HANDLE_INVALID);
		bloblen = sizeof blob;
		check ("wrap under data1 (not RSA)", f->C_WrapKey (s, &m, data1, edw, blob, &bloblen), CKR_WRAPPING_KEY_HANDLE_INVALID);
		fp = fopen (argv[3], "rb");
		inlen = fp ? fread (in, 1, sizeof in, fp) : 0;
		if (fp)
			fclose (fp);
		check ("unwrap the blob made outside", f->C_UnwrapKey (s, &m, priv, in, inlen, hmt, 4, &mk), CKR_OK);
		check ("HMAC with it", f->C_SignInit (s, &hmac, mk), CKR_OK);
		check ("", f->C_Sign (s, (CK_BYTE_PTR) "abc", 3, tag, &taglen), CKR_OK);
		printf ("tag: ");
		for (i = 0; i < taglen; i++)
			printf ("%02x", tag[i]);
		printf ("\n");
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "hkdf") == 0) {
		struct {
			CK_BBOOL extract, expand;
			CK_MECHANISM_TYPE prf;
			CK_ULONG salt_type;
			CK_BYTE_PTR salt;
			CK_ULONG salt_len;
			CK_OBJECT_HANDLE salt_key;
			CK_BYTE_PTR info;
			CK_ULONG info_len;
		} p = { CK_TRUE, CK_TRUE, CKM_SHA256, 2, (CK_BYTE_PTR) "salt", 4, 0, (CK_BYTE_PTR) "info", 4 };
		CK_MECHANISM m = { 0x402a /* CKM_HKDF_DERIVE */, &p, sizeof p }, hmac = { CKM_SHA256_HMAC, NULL, 0 };
		CK_MECHANISM agen = { CKM_AES_KEY_GEN, NULL, 0 };
		CK_OBJECT_CLASS sec = CKO_SECRET_KEY, pk = CKO_PRIVATE_KEY;
		CK_KEY_TYPE gen = CKK_GENERIC_SECRET, aes = CKK_AES;
		CK_ULONG len32 = 32, taglen = 32, i;
		CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
		CK_BYTE k[32], tag[32], value[64];
		CK_ATTRIBUTE parent[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
			{ CKA_VALUE, k, sizeof k }, { CKA_SIGN, &yes, 1 }, { CKA_DERIVE, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE noderive[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
			{ CKA_VALUE, k, sizeof k }, { CKA_SIGN, &yes, 1 }, { CKA_DERIVE, &no, 1 }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE child[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
			{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_SIGN, &yes, 1 }, { CKA_TOKEN, &no, 1 },
			{ CKA_SENSITIVE, &no, 1 }, { CKA_EXTRACTABLE, &yes, 1 } };
		CK_ULONG nchild = 5; /* without the last two: asking them is a relaxation */
		CK_ATTRIBUTE aesc[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &aes, sizeof aes }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE privc[] = { { CKA_CLASS, &pk, sizeof pk }, { CKA_KEY_TYPE, &gen, sizeof gen }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE va = { CKA_VALUE, value, sizeof value };
		CK_SESSION_HANDLE s;
		CK_OBJECT_HANDLE base, nd, ck, ak, x;
		memset (k, 0x5a, sizeof k);
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
		check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
		check ("import the parent", f->C_CreateObject (s, parent, 6, &base), CKR_OK);
		check ("import one without derive", f->C_CreateObject (s, noderive, 6, &nd), CKR_OK);
		check ("a child asked exportable and wrappable", f->C_DeriveKey (s, &m, base, child, 7, &x), CKR_TEMPLATE_INCONSISTENT);
		check ("derive an HMAC key", f->C_DeriveKey (s, &m, base, child, nchild, &ck), CKR_OK);
		check ("its value", f->C_GetAttributeValue (s, ck, &va, 1), CKR_ATTRIBUTE_SENSITIVE);
		{
			/* Derived from an imported key: not always sensitive,
			 * not never extractable. */
			CK_BBOOL as = CK_TRUE, ne = CK_TRUE;
			CK_ATTRIBUTE prov[] = { { CKA_ALWAYS_SENSITIVE, &as, 1 }, { CKA_NEVER_EXTRACTABLE, &ne, 1 } };
			check ("its provenance", f->C_GetAttributeValue (s, ck, prov, 2), CKR_OK);
			check ("CKA_ALWAYS_SENSITIVE false", as, CK_FALSE);
			check ("CKA_NEVER_EXTRACTABLE false", ne, CK_FALSE);
		}
		{
			/* Derived from a key generated sensitive and
			 * unextractable, and from that one in turn: always
			 * sensitive and never extractable, as their base keys
			 * were. */
			CK_MECHANISM ggen = { 0x350 /* CKM_GENERIC_SECRET_KEY_GEN */, NULL, 0 };
			CK_ATTRIBUTE gena[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
				{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_DERIVE, &yes, 1 }, { CKA_TOKEN, &no, 1 },
				{ CKA_SENSITIVE, &yes, 1 }, { CKA_EXTRACTABLE, &no, 1 } };
			CK_ATTRIBUTE childd[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
				{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_DERIVE, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
			CK_OBJECT_HANDLE g, gc, ggc, *hs[] = { &gc, &ggc };
			CK_BBOOL as, ne;
			CK_ATTRIBUTE prov[] = { { CKA_ALWAYS_SENSITIVE, &as, 1 }, { CKA_NEVER_EXTRACTABLE, &ne, 1 } };
			check ("a sensitive, unextractable key to derive from", f->C_GenerateKey (s, &ggen, gena, 7, &g), CKR_OK);
			check ("derive from it", f->C_DeriveKey (s, &m, g, childd, 5, &gc), CKR_OK);
			check ("derive from its child", f->C_DeriveKey (s, &m, gc, childd, 5, &ggc), CKR_OK);
			for (i = 0; i < 2; i++) {
				as = ne = CK_FALSE;
				check ("the provenance of a child of a sensitive key", f->C_GetAttributeValue (s, *hs[i], prov, 2), CKR_OK);
				check ("CKA_ALWAYS_SENSITIVE true", as, CK_TRUE);
				check ("CKA_NEVER_EXTRACTABLE true", ne, CK_TRUE);
			}
		}
		check ("HMAC with it", f->C_SignInit (s, &hmac, ck), CKR_OK);
		check ("", f->C_Sign (s, (CK_BYTE_PTR) "abc", 3, tag, &taglen), CKR_OK);
		printf ("tag: ");
		for (i = 0; i < taglen; i++)
			printf ("%02x", tag[i]);
		printf ("\n");
		check ("an AES key", f->C_GenerateKey (s, &agen, aesc, 3, &ak), CKR_OK);
		check ("from a key without the derive usage", f->C_DeriveKey (s, &m, nd, child, nchild, &x) != CKR_OK, CK_TRUE);
		check ("a private key asked for", f->C_DeriveKey (s, &m, base, privc, 3, &x), CKR_TEMPLATE_INCONSISTENT);
		check ("from an AES key", f->C_DeriveKey (s, &m, ak, child, nchild, &x), CKR_KEY_TYPE_INCONSISTENT);
		p.expand = CK_FALSE;
		check ("extract only", f->C_DeriveKey (s, &m, base, child, nchild, &x), CKR_MECHANISM_PARAM_INVALID);
		p.expand = CK_TRUE;
		p.salt_type = 4;
		check ("a salt key", f->C_DeriveKey (s, &m, base, child, nchild, &x), CKR_MECHANISM_PARAM_INVALID);
		p.salt_type = 2;
		p.prf = CKM_SHA_1;
		check ("SHA-1", f->C_DeriveKey (s, &m, base, child, nchild, &x), CKR_MECHANISM_PARAM_INVALID);
		p.prf = CKM_SHA256;
		m.mechanism = CKM_AES_ECB_ENCRYPT_DATA;
		check ("an ECB derivation", f->C_DeriveKey (s, &m, base, child, nchild, &x), CKR_MECHANISM_INVALID);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "ecdh") == 0 && argc == 4 && strlen (argv[3]) == 130) {
		CK_BYTE point[65], der[67], value[64];
		CK_ECDH1_DERIVE_PARAMS p = { CKD_SHA256_KDF, 6, (CK_BYTE_PTR) "shared", sizeof point, point };
		CK_MECHANISM m = { CKM_ECDH1_DERIVE, &p, sizeof p };
		CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
		CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
		CK_ULONG len32 = 32, i;
		CK_BBOOL no = CK_FALSE;
		CK_ATTRIBUTE child[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
			{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &no, 1 } };
		CK_ATTRIBUTE va = { CKA_VALUE, value, sizeof value };
		CK_SESSION_HANDLE s;
		CK_OBJECT_HANDLE base, k, x;
		for (i = 0; i < sizeof point; i++)
			sscanf (argv[3] + 2 * i, "%2hhx", &point[i]);
		der[0] = 4;
		der[1] = sizeof point;
		memcpy (der + 2, point, sizeof point);
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
		check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
		check ("dh1", find (f, s, CKO_PRIVATE_KEY, "dh1", &base), CKR_OK);
		check ("X9.63 with SHA-256", f->C_DeriveKey (s, &m, base, child, 5, &k), CKR_OK);
		check ("its value", f->C_GetAttributeValue (s, k, &va, 1), CKR_OK);
		printf ("x963: ");
		for (i = 0; i < va.ulValueLen; i++)
			printf ("%02x", value[i]);
		printf ("\n");
		p.kdf = CKD_NULL;
		check ("CKD_NULL with shared data", f->C_DeriveKey (s, &m, base, child, 5, &x), CKR_MECHANISM_PARAM_INVALID);
		p.ulSharedDataLen = 0;
		p.pSharedData = NULL;
		p.pPublicData = der;
		p.ulPublicDataLen = sizeof der;
		va.ulValueLen = sizeof value;
		check ("CKD_NULL, the point in an OCTET STRING", f->C_DeriveKey (s, &m, base, child, 5, &k), CKR_OK);
		check ("its value", f->C_GetAttributeValue (s, k, &va, 1), CKR_OK);
		printf ("raw: ");
		for (i = 0; i < va.ulValueLen; i++)
			printf ("%02x", value[i]);
		printf ("\n");
		p.kdf = CKD_SHA1_KDF;
		check ("SHA-1", f->C_DeriveKey (s, &m, base, child, 5, &x), CKR_MECHANISM_PARAM_INVALID);
		p.kdf = CKD_NULL;
		p.pPublicData = NULL;
		check ("a length without data", f->C_DeriveKey (s, &m, base, child, 5, &x), CKR_MECHANISM_PARAM_INVALID);
		p.pPublicData = der;
		m.ulParameterLen = sizeof p - 1;
		check ("a short parameter", f->C_DeriveKey (s, &m, base, child, 5, &x), CKR_MECHANISM_PARAM_INVALID);
		m.pParameter = NULL;
		m.ulParameterLen = 0;
		check ("no parameter", f->C_DeriveKey (s, &m, base, child, 5, &x), CKR_MECHANISM_PARAM_INVALID);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "x25519") == 0 && argc == 4 && strlen (argv[3]) == 64) {
		CK_BYTE peer[32], der[34], value[64], ec_point[64], params[16];
		CK_BYTE x25519_oid[] = { 0x06, 0x03, 0x2b, 0x65, 0x6e };
		CK_BYTE x25519_name[] = { 0x13, 0x0a, 'c', 'u', 'r', 'v', 'e', '2', '5', '5', '1', '9' };
		CK_ECDH1_DERIVE_PARAMS p = { CKD_NULL, 0, NULL, sizeof peer, peer };
		CK_MECHANISM m = { CKM_ECDH1_DERIVE, &p, sizeof p };
		CK_MECHANISM gen = { 0x1056 /* CKM_EC_MONTGOMERY_KEY_PAIR_GEN */, NULL, 0 };
		CK_OBJECT_CLASS sec = CKO_SECRET_KEY, pubc = CKO_PUBLIC_KEY;
		CK_KEY_TYPE generic = CKK_GENERIC_SECRET, kt = 0;
		CK_ULONG len32 = 32, i;
		CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
		CK_ATTRIBUTE child[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &generic, sizeof generic },
			{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &no, 1 } };
		CK_ATTRIBUTE va = { CKA_VALUE, value, sizeof value };
		CK_ATTRIBUTE pa[] = { { CKA_KEY_TYPE, &kt, sizeof kt }, { CKA_EC_PARAMS, params, sizeof params },
			{ CKA_EC_POINT, ec_point, sizeof ec_point } };
		CK_ATTRIBUTE pubt[] = { { CKA_EC_PARAMS, x25519_oid, sizeof x25519_oid }, { CKA_TOKEN, &no, 1 }, { CKA_DERIVE, &yes, 1 } };
		CK_ATTRIBUTE privt[] = { { CKA_TOKEN, &no, 1 }, { CKA_DERIVE, &yes, 1 }, { CKA_SENSITIVE, &no, 1 } };
		CK_ATTRIBUTE find_pub[] = { { CKA_CLASS, &pubc, sizeof pubc }, { CKA_LABEL, "xdh", 3 } };
		CK_SESSION_HANDLE s;
		CK_OBJECT_HANDLE base, pub, k, x, gpub, gpriv;
		CK_ULONG count = 0;
		for (i = 0; i < sizeof peer; i++)
			sscanf (argv[3] + 2 * i, "%2hhx", &peer[i]);
		der[0] = 4;
		der[1] = sizeof peer;
		memcpy (der + 2, peer, sizeof peer);
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
		check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
		check ("xdh", find (f, s, CKO_PRIVATE_KEY, "xdh", &base), CKR_OK);
		check ("C_FindObjectsInit", f->C_FindObjectsInit (s, find_pub, 2), CKR_OK);
		check ("C_FindObjects", f->C_FindObjects (s, &pub, 1, &count), CKR_OK);
		check ("C_FindObjectsFinal", f->C_FindObjectsFinal (s), CKR_OK);
		check ("xdh's public object", count == 1, CK_TRUE);
		check ("its attributes", f->C_GetAttributeValue (s, pub, pa, 3), CKR_OK);
		check ("CKK_EC_MONTGOMERY", kt == 0x41, CK_TRUE);
		check ("CKA_EC_PARAMS, curve25519's OID", pa[1].ulValueLen == sizeof x25519_oid &&
		       memcmp (params, x25519_oid, sizeof x25519_oid) == 0, CK_TRUE);
		check ("CKA_EC_POINT, an OCTET STRING of 32 bytes", pa[2].ulValueLen == 34 && ec_point[0] == 4 && ec_point[1] == 32, CK_TRUE);
		printf ("point: ");
		for (i = 2; i < 34; i++)
			printf ("%02x", ec_point[i]);
		printf ("\n");
		check ("CKD_NULL, the peer's value raw", f->C_DeriveKey (s, &m, base, child, 5, &k), CKR_OK);
		check ("its value", f->C_GetAttributeValue (s, k, &va, 1), CKR_OK);
		printf ("secret: ");
		for (i = 0; i < va.ulValueLen; i++)
			printf ("%02x", value[i]);
		printf ("\n");
		p.pPublicData = der;
		p.ulPublicDataLen = sizeof der;
		va.ulValueLen = sizeof value;
		check ("CKD_NULL, the peer's value in an OCTET STRING", f->C_DeriveKey (s, &m, base, child, 5, &k), CKR_OK);
		check ("its value", f->C_GetAttributeValue (s, k, &va, 1), CKR_OK);
		printf ("secret (DER): ");
		for (i = 0; i < va.ulValueLen; i++)
			printf ("%02x", value[i]);
		printf ("\n");
		p.pPublicData = peer;
		p.ulPublicDataLen = 31;
		check ("a value of 31 bytes", f->C_DeriveKey (s, &m, base, child, 5, &x), CKR_MECHANISM_PARAM_INVALID);
		/* Key pairs made with CKM_EC_MONTGOMERY_KEY_PAIR_GEN, the curve
		 * named by its OID and by its name. */
		check ("CKM_EC_MONTGOMERY_KEY_PAIR_GEN, the OID", f->C_GenerateKeyPair (s, &gen, pubt, 3, privt, 3, &gpub, &gpriv), CKR_OK);
		kt = 0;
		check ("its type", f->C_GetAttributeValue (s, gpriv, pa, 1), CKR_OK);
		check ("CKK_EC_MONTGOMERY", kt == 0x41, CK_TRUE);
		p.ulPublicDataLen = sizeof peer;
		check ("CKD_NULL with it", f->C_DeriveKey (s, &m, gpriv, child, 5, &k), CKR_OK);
		pubt[0].pValue = x25519_name;
		pubt[0].ulValueLen = sizeof x25519_name;
		check ("CKM_EC_MONTGOMERY_KEY_PAIR_GEN, the name", f->C_GenerateKeyPair (s, &gen, pubt, 3, privt, 3, &gpub, &gpriv), CKR_OK);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "bigcall") == 0) {
		/* A C_Digest of 2 MiB, more than the daemon takes: refused with
		 * CKR_DATA_LEN_RANGE, which ends the digest; the session (and
		 * its connection) goes on. With keywarden's module the refusal
		 * is the module's; with p11-kit's client, which sends the call,
		 * the daemon's. */
		size_t big = 2u << 20;
		CK_BYTE_PTR huge = calloc (1, big);
		CK_BYTE digest[64];
		CK_MECHANISM sha = { CKM_SHA256, NULL, 0 };
		CK_SESSION_HANDLE s;
		CK_SLOT_ID slot;
		CK_ULONG len, n = 1;
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_GetSlotList", f->C_GetSlotList (CK_TRUE, &slot, &n), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
		check ("C_DigestInit", f->C_DigestInit (s, &sha), CKR_OK);
		len = sizeof digest;
		check ("C_Digest of 2 MiB", f->C_Digest (s, huge, big, digest, &len), CKR_DATA_LEN_RANGE);
		len = sizeof digest;
		check ("C_Digest after it: the digest ended", f->C_Digest (s, (CK_BYTE_PTR) "abc", 3, digest, &len), CKR_OPERATION_NOT_INITIALIZED);
		check ("C_DigestInit again", f->C_DigestInit (s, &sha), CKR_OK);
		len = sizeof digest;
		check ("C_Digest of abc", f->C_Digest (s, (CK_BYTE_PTR) "abc", 3, digest, &len), CKR_OK);
		check ("SHA-256 of abc", len == 32 && digest[0] == 0xba && digest[31] == 0xad, CK_TRUE);
		check ("C_CloseSession", f->C_CloseSession (s), CKR_OK);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
		free (huge);
	} else if (strcmp (argv[2], "toolong") == 0) {
		/* Calls longer than the daemon takes (a body of 1 MiB) are
		 * refused by the module, the connection and the other
		 * sessions unharmed. */
		size_t big = (1u << 20) + 1;
		CK_BYTE_PTR huge = calloc (1, big);
		CK_BYTE iv[12] = {0}, data[32], sig[128], digest[64];
		CK_GCM_PARAMS gcm = { iv, sizeof iv, 96, huge, big, 128 };
		CK_MECHANISM mgcm = { CKM_AES_GCM, &gcm, sizeof gcm }, agen = { CKM_AES_KEY_GEN, NULL, 0 };
		CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 }, sha = { CKM_SHA256, NULL, 0 };
		struct {
			CK_BBOOL extract, expand;
			CK_MECHANISM_TYPE prf;
			CK_ULONG salt_type;
			CK_BYTE_PTR salt;
			CK_ULONG salt_len;
			CK_OBJECT_HANDLE salt_key;
			CK_BYTE_PTR info;
			CK_ULONG info_len;
		} hp = { CK_TRUE, CK_TRUE, CKM_SHA256, 2, (CK_BYTE_PTR) "salt", 4, 0, huge, big };
		CK_MECHANISM mhkdf = { 0x402a /* CKM_HKDF_DERIVE */, &hp, sizeof hp };
		CK_OBJECT_CLASS sec = CKO_SECRET_KEY;
		CK_KEY_TYPE gen = CKK_GENERIC_SECRET, aes = CKK_AES;
		CK_ULONG len32 = 32, len;
		CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
		CK_BYTE k[32];
		CK_ATTRIBUTE parent[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
			{ CKA_VALUE, k, sizeof k }, { CKA_DERIVE, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE child[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &gen, sizeof gen },
			{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE aest[] = { { CKA_CLASS, &sec, sizeof sec }, { CKA_KEY_TYPE, &aes, sizeof aes },
			{ CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_ENCRYPT, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
		CK_BYTE point[65] = {4};
		CK_ECDH1_DERIVE_PARAMS ep = { CKD_SHA256_KDF, big, huge, sizeof point, point };
		CK_MECHANISM mecdh = { CKM_ECDH1_DERIVE, &ep, sizeof ep };
		CK_SESSION_HANDLE s, s2;
		CK_OBJECT_HANDLE ec, dh, base, ak, x;
		memset (k, 0x5a, sizeof k);
		memset (data, 5, sizeof data);
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
		check ("a second session", f->C_OpenSession (0, CKF_SERIAL_SESSION, NULL, NULL, &s2), CKR_OK);
		check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
		check ("ec1", find (f, s, CKO_PRIVATE_KEY, "ec1", &ec), CKR_OK);
		check ("dh1", find (f, s, CKO_PRIVATE_KEY, "dh1", &dh), CKR_OK);
		check ("an HMAC parent", f->C_CreateObject (s, parent, 5, &base), CKR_OK);
		check ("an AES key", f->C_GenerateKey (s, &agen, aest, 5, &ak), CKR_OK);
		check ("HKDF info too long", f->C_DeriveKey (s, &mhkdf, base, child, 4, &x), CKR_MECHANISM_PARAM_INVALID);
		check ("ECDH shared data too long", f->C_DeriveKey (s, &mecdh, dh, child, 4, &x), CKR_MECHANISM_PARAM_INVALID);
		check ("GCM AAD too long", f->C_EncryptInit (s, &mgcm, ak), CKR_MECHANISM_PARAM_INVALID);
		check ("C_DigestInit", f->C_DigestInit (s, &sha), CKR_OK);
		len = sizeof digest;
		check ("C_Digest of data too long", f->C_Digest (s, huge, big, digest, &len), CKR_DATA_LEN_RANGE);
		check ("C_SignInit in the second session", f->C_SignInit (s2, &ecdsa, ec), CKR_OK);
		len = sizeof sig;
		check ("C_Sign in the second session", f->C_Sign (s2, data, sizeof data, sig, &len), CKR_OK);
		check ("C_SignInit in the first", f->C_SignInit (s, &ecdsa, ec), CKR_OK);
		len = sizeof sig;
		check ("C_Sign of data too long", f->C_Sign (s, huge, big, sig, &len), CKR_DATA_LEN_RANGE);
		len = sizeof sig;
		check ("C_Sign in the first, the operation ended", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
		check ("C_SignInit again", f->C_SignInit (s, &ecdsa, ec), CKR_OK);
		len = sizeof sig;
		check ("C_Sign", f->C_Sign (s, data, sizeof data, sig, &len), CKR_OK);
		hp.info_len = 4;
		check ("HKDF with a short info", f->C_DeriveKey (s, &mhkdf, base, child, 4, &x), CKR_OK);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
		free (huge);
	} else if (strcmp (argv[2], "copy") == 0) {
		CK_BBOOL no = CK_FALSE, yes = CK_TRUE, sens = CK_FALSE, extr = CK_TRUE;
		CK_ATTRIBUTE relax[] = { { CKA_SENSITIVE, &no, 1 }, { CKA_EXTRACTABLE, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
		CK_ATTRIBUTE after[] = { { CKA_SENSITIVE, &sens, 1 }, { CKA_EXTRACTABLE, &extr, 1 } };
		CK_ATTRIBUTE gain = { CKA_WRAP, &yes, 1 };
		CK_BYTE value[64];
		CK_ATTRIBUTE va = { CKA_VALUE, value, sizeof value };
		CK_SESSION_HANDLE s;
		CK_OBJECT_HANDLE k, x = 0;
		CK_RV rv;
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_OpenSession", f->C_OpenSession (0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
		check ("C_Login", f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3), CKR_OK);
		check ("aes1", find (f, s, CKO_SECRET_KEY, "aes1", &k), CKR_OK);
		rv = f->C_CopyObject (s, k, relax, 3, &x);
		printf ("copy asking exportable and wrappable: rv 0x%lx\n", (unsigned long) rv);
		check ("copy asking exportable and wrappable refused", rv != CKR_OK, CK_TRUE);
		if (rv == CKR_OK)
			check ("the copy's value", f->C_GetAttributeValue (s, x, &va, 1), CKR_ATTRIBUTE_SENSITIVE);
		check ("a plain copy refused", f->C_CopyObject (s, k, NULL, 0, &x), CKR_ACTION_PROHIBITED);
		check ("a copy asking to wrap refused", f->C_CopyObject (s, k, &gain, 1, &x), CKR_ACTION_PROHIBITED);
		check ("a copy of no object", f->C_CopyObject (s, k + 1000, NULL, 0, &x), CKR_OBJECT_HANDLE_INVALID);
		check ("aes1's attributes", f->C_GetAttributeValue (s, k, after, 2), CKR_OK);
		check ("aes1 still sensitive and not extractable", sens == CK_TRUE && extr == CK_FALSE, CK_TRUE);
		check ("aes1's value", f->C_GetAttributeValue (s, k, &va, 1), CKR_ATTRIBUTE_SENSITIVE);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "slots") == 0) {
		CK_SLOT_ID slots[4];
		CK_ULONG n = 4;
		CK_SESSION_HANDLE s0, s1;
		CK_OBJECT_HANDLE k0, k1;
		CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
		check ("C_Initialize", init (f), CKR_OK);
		check ("C_GetSlotList", f->C_GetSlotList (CK_TRUE, slots, &n), CKR_OK);
		check ("two slots with a token", n, 2);
		if (n != 2)
			return 1;
		check ("open on slot 0", f->C_OpenSession (slots[0], CKF_SERIAL_SESSION, NULL, NULL, &s0), CKR_OK);
		check ("open on slot 1", f->C_OpenSession (slots[1], CKF_SERIAL_SESSION, NULL, NULL, &s1), CKR_OK);
		f->C_Login (s0, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3);
		f->C_Login (s1, CKU_USER, (CK_UTF8CHAR_PTR) "any", 3);
		check ("a key on slot 0", first_ec_key (f, s0, &k0), CKR_OK);
		check ("a key on slot 1", first_ec_key (f, s1, &k1), CKR_OK);
		check ("slot 0 signs with its key", sign_once (f, s0, k0), CKR_OK);
		check ("slot 1 signs with its key", sign_once (f, s1, k1), CKR_OK);
		check ("slot 0's key in a session of slot 1", f->C_SignInit (s1, &mech, k0), CKR_KEY_HANDLE_INVALID);
		check ("slot 1's key in a session of slot 0", f->C_SignInit (s0, &mech, k1), CKR_KEY_HANDLE_INVALID);
		check ("destroying slot 0's key from slot 1", f->C_DestroyObject (s1, k0), CKR_OBJECT_HANDLE_INVALID);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "refused") == 0 && argc == 4) {
		CK_SLOT_ID slots[4];
		CK_ULONG n = 4;
		CK_SLOT_INFO si;
		CK_TOKEN_INFO ti;
		CK_SESSION_HANDLE s = 0;
		CK_RV rv;
		check ("C_Initialize", init (f), CKR_OK);
		rv = f->C_GetSlotList (CK_TRUE, slots, &n);
		check ("no slot with a token", rv == CKR_OK && n == 0, CK_TRUE);
		n = 4;
		check ("C_GetSlotList of all slots", f->C_GetSlotList (CK_FALSE, slots, &n), CKR_OK);
		check ("slot 0 without a token", f->C_GetSlotInfo (0, &si) == CKR_OK && !(si.flags & CKF_TOKEN_PRESENT), CK_TRUE);
		check ("C_GetTokenInfo", f->C_GetTokenInfo (0, &ti), CKR_TOKEN_NOT_PRESENT);
		rv = f->C_OpenSession (0, CKF_SERIAL_SESSION, NULL, NULL, &s);
		check ("C_OpenSession", rv, CKR_TOKEN_NOT_PRESENT);
		if (rv == CKR_OK) {
			/* What a program would send next: its PIN, and a
			 * signature to check. */
			CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
			CK_BYTE data[32], sig[64];
			memset (data, 7, sizeof data);
			memset (sig, 9, sizeof sig);
			f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) argv[3], strlen (argv[3]));
			f->C_VerifyInit (s, &mech, 1);
			check ("C_Verify by a stand-in", f->C_Verify (s, data, sizeof data, sig, sizeof sig) != CKR_OK, CK_TRUE);
		}
		f->C_Finalize (NULL);
	} else if (strcmp (argv[2], "daemonize") == 0 && argc == 4) {
		pid_t pid;
		int st;
		check ("C_Initialize", init (f), CKR_OK);
		check ("parent signs", sign (f, 1), CKR_OK);
		fflush (stdout);
		pid = fork ();
		if (pid == 0) {
			int fd, ok = 1;
			char line[64];
			for (fd = 3; fd < 64; fd++)
				close (fd);
			fd = open (argv[3], O_WRONLY | O_APPEND);
			check ("child opens its file on descriptor 3", fd, 3);
			for (st = 4; st < 64; st++)
				if (dup2 (fd, st) != st)
					ok = 0;
			check ("child's file on descriptors 3 to 63", ok, 1);
			check ("child C_Initialize", init (f), CKR_OK);
			check ("child signs", sign (f, 1), CKR_OK);
			for (st = 3; st < 64; st++) {
				int n = snprintf (line, sizeof line, "fd %d\n", st);
				if (write (st, line, n) != n) {
					printf ("child writes to its file on descriptor %d: FAILED\n", st);
					failed = 1;
				}
			}
			fflush (stdout);
			_exit (failed);
		}
		waitpid (pid, &st, 0);
		check ("child exits 0", WIFEXITED (st) ? (CK_RV) WEXITSTATUS (st) : 99, CKR_OK);
		check ("parent signs after the fork", sign (f, 1), CKR_OK);
		check ("C_Finalize", f->C_Finalize (NULL), CKR_OK);
	} else if (strcmp (argv[2], "nodaemon") == 0) {
		CK_SLOT_ID slots[4];
		CK_ULONG n = 4;
		CK_RV rv;
		check ("C_Initialize without a daemon", init (f), CKR_OK);
		rv = f->C_GetSlotList (CK_TRUE, slots, &n);
		printf ("C_GetSlotList: rv 0x%lx, %lu slots with a token\n", (unsigned long) rv, (unsigned long) n);
		if (rv == CKR_OK && n != 0)
			failed = 1;
		f->C_Finalize (NULL);
	} else {
		return 2;
	}
	return failed;
}
