/*
 * keywarden-p11bench: operations per second through a PKCS #11 module,
 * loaded as programs load one, for keywarden bench --pkcs11.
 *
 *   keywarden-p11bench MODULE PIN SECONDS THREADS [OPS]
 *
 * Each thread opens its own session, logs in with PIN, makes session keys
 * (an ECDSA P-256 and an Ed25519 key pair, an HMAC key of 32 bytes, an
 * AES-256 key) and then, for SECONDS each, one call at a time as programs
 * do (C_SignInit and C_Sign, C_EncryptInit and C_Encrypt): ECDSA P-256
 * over a SHA-256 digest, Ed25519 of 64 bytes, HMAC-SHA-256 and AES-256-GCM
 * encryption of 256 bytes. It prints one line per operation, "NAME N/s",
 * the sum over the threads, and exits 0; or a message and 1. OPS, a list
 * of names separated by commas, runs and prints only those (to count what
 * one operation costs, with perf or strace around the host).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR shared;
static const char *bench_pin;
static double bench_seconds;
static const char *bench_ops;

/* wanted reports whether the operation name is to be run. */
static int wanted (const char *name)
{
	const char *p = bench_ops;
	size_t n = strlen (name);

	if (p == NULL)
		return 1;
	while ((p = strstr (p, name)) != NULL) {
		if ((p == bench_ops || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
			return 1;
		p += n;
	}
	return 0;
}

struct bench_result {
	CK_RV rv;
	long ecdsa, ed25519, hmac, gcm;
};

static double now (void)
{
	struct timespec ts;
	clock_gettime (CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* bench_op runs C_*Init and one call for bench_seconds; the count. */
static long bench_op (CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key,
                      CK_BYTE_PTR in, CK_ULONG inlen, int encrypt, CK_RV *rv)
{
	CK_BYTE out[1024];
	CK_ULONG outlen;
	double end = now () + bench_seconds;
	long n = 0;

	while (now () < end) {
		outlen = sizeof out;
		if (encrypt) {
			if ((*rv = f->C_EncryptInit (s, m, key)) != CKR_OK ||
			    (*rv = f->C_Encrypt (s, in, inlen, out, &outlen)) != CKR_OK)
				return n;
		} else if ((*rv = f->C_SignInit (s, m, key)) != CKR_OK ||
		           (*rv = f->C_Sign (s, in, inlen, out, &outlen)) != CKR_OK) {
			return n;
		}
		n++;
	}
	return n;
}

static void *bench_worker (void *arg)
{
	struct bench_result *r = arg;
	CK_FUNCTION_LIST_PTR f = shared;
	CK_SLOT_ID slots[8];
	CK_ULONG n = 8;
	CK_SESSION_HANDLE s;
	CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
	CK_BYTE ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG len32 = 32;
	CK_ATTRIBUTE pub[] = { { CKA_EC_PARAMS, p256, sizeof p256 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_ATTRIBUTE edpub[] = { { CKA_EC_PARAMS, ed25519, sizeof ed25519 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 } };
	CK_ATTRIBUTE priv[] = { { CKA_SIGN, &yes, 1 }, { CKA_TOKEN, &no, 1 }, { CKA_SENSITIVE, &yes, 1 } };
	CK_ATTRIBUTE sec[] = { { CKA_SIGN, &yes, 1 }, { CKA_VERIFY, &yes, 1 }, { CKA_TOKEN, &no, 1 },
	                       { CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_SENSITIVE, &yes, 1 } };
	CK_ATTRIBUTE aes[] = { { CKA_ENCRYPT, &yes, 1 }, { CKA_DECRYPT, &yes, 1 }, { CKA_TOKEN, &no, 1 },
	                       { CKA_VALUE_LEN, &len32, sizeof len32 }, { CKA_SENSITIVE, &yes, 1 } };
	CK_MECHANISM ecgen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 }, edgen = { CKM_EC_EDWARDS_KEY_PAIR_GEN, NULL, 0 };
	CK_MECHANISM secgen = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 }, aesgen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_BYTE iv[12] = { 0 };
	CK_GCM_PARAMS gcmp = { iv, sizeof iv, 96, NULL, 0, 128 };
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 }, hmac = { CKM_SHA256_HMAC, NULL, 0 }, eddsa = { CKM_EDDSA, NULL, 0 };
	CK_MECHANISM gcm = { CKM_AES_GCM, &gcmp, sizeof gcmp };
	CK_OBJECT_HANDLE pk, sk, epk, esk, mk, ak;
	CK_BYTE digest[32], data[256];

	memset (digest, 1, sizeof digest);
	memset (data, 2, sizeof data);
	if ((r->rv = f->C_GetSlotList (CK_TRUE, slots, &n)) != CKR_OK)
		return NULL;
	if (n == 0) {
		r->rv = CKR_TOKEN_NOT_PRESENT;
		return NULL;
	}
	if ((r->rv = f->C_OpenSession (slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s)) != CKR_OK)
		return NULL;
	r->rv = f->C_Login (s, CKU_USER, (CK_UTF8CHAR_PTR) bench_pin, strlen (bench_pin));
	if (r->rv != CKR_OK && r->rv != CKR_USER_ALREADY_LOGGED_IN)
		return NULL;
	if ((r->rv = f->C_GenerateKeyPair (s, &ecgen, pub, 3, priv, 3, &pk, &sk)) != CKR_OK ||
	    (r->rv = f->C_GenerateKeyPair (s, &edgen, edpub, 3, priv, 3, &epk, &esk)) != CKR_OK ||
	    (r->rv = f->C_GenerateKey (s, &secgen, sec, 5, &mk)) != CKR_OK ||
	    (r->rv = f->C_GenerateKey (s, &aesgen, aes, 5, &ak)) != CKR_OK)
		return NULL;
	if (wanted ("ecdsa-p256"))
		r->ecdsa = bench_op (f, s, &ecdsa, sk, digest, sizeof digest, 0, &r->rv);
	if (r->rv != CKR_OK)
		return NULL;
	if (wanted ("ed25519"))
		r->ed25519 = bench_op (f, s, &eddsa, esk, data, 64, 0, &r->rv);
	if (r->rv != CKR_OK)
		return NULL;
	if (wanted ("hmac-sha256-256B"))
		r->hmac = bench_op (f, s, &hmac, mk, data, sizeof data, 0, &r->rv);
	if (r->rv != CKR_OK)
		return NULL;
	if (wanted ("aes-gcm-256B"))
		r->gcm = bench_op (f, s, &gcm, ak, data, sizeof data, 1, &r->rv);
	return NULL;
}

int main (int argc, char **argv)
{
	CK_C_GetFunctionList get;
	CK_C_INITIALIZE_ARGS args;
	void *h;
	int threads, i;
	pthread_t th[64];
	struct bench_result res[64];
	long ecdsa = 0, ed = 0, hmac = 0, gcm = 0;
	CK_RV rv;

	if (argc != 5 && argc != 6) {
		fprintf (stderr, "usage: keywarden-p11bench MODULE PIN SECONDS THREADS [OPS]\n");
		return 2;
	}
	bench_pin = argv[2];
	bench_seconds = atof (argv[3]);
	threads = atoi (argv[4]);
	if (argc == 6)
		bench_ops = argv[5];
	if (threads < 1 || threads > 64 || bench_seconds <= 0) {
		fprintf (stderr, "keywarden-p11bench: 1 to 64 threads, a positive number of seconds\n");
		return 2;
	}
	h = dlopen (argv[1], RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		fprintf (stderr, "keywarden-p11bench: %s\n", dlerror ());
		return 1;
	}
	get = (CK_C_GetFunctionList) dlsym (h, "C_GetFunctionList");
	if (get == NULL || get (&shared) != CKR_OK) {
		fprintf (stderr, "keywarden-p11bench: no C_GetFunctionList in %s\n", argv[1]);
		return 1;
	}
	memset (&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	if ((rv = shared->C_Initialize (&args)) != CKR_OK) {
		fprintf (stderr, "keywarden-p11bench: C_Initialize: 0x%lx\n", (unsigned long) rv);
		return 1;
	}
	memset (res, 0, sizeof res);
	for (i = 0; i < threads; i++)
		pthread_create (&th[i], NULL, bench_worker, &res[i]);
	rv = CKR_OK;
	for (i = 0; i < threads; i++) {
		pthread_join (th[i], NULL);
		if (res[i].rv != CKR_OK)
			rv = res[i].rv;
		ecdsa += res[i].ecdsa;
		ed += res[i].ed25519;
		hmac += res[i].hmac;
		gcm += res[i].gcm;
	}
	shared->C_Finalize (NULL);
	if (rv != CKR_OK) {
		fprintf (stderr, "keywarden-p11bench: a thread failed: 0x%lx\n", (unsigned long) rv);
		return 1;
	}
	if (wanted ("ecdsa-p256"))
		printf ("ecdsa-p256 %.0f/s\n", ecdsa / bench_seconds);
	if (wanted ("ed25519"))
		printf ("ed25519 %.0f/s\n", ed / bench_seconds);
	if (wanted ("hmac-sha256-256B"))
		printf ("hmac-sha256-256B %.0f/s\n", hmac / bench_seconds);
	if (wanted ("aes-gcm-256B"))
		printf ("aes-gcm-256B %.0f/s\n", gcm / bench_seconds);
	return 0;
}
