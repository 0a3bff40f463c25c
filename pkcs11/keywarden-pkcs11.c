/*
 * libkeywarden-pkcs11.so: the PKCS #11 module of keywarden.
 *
 * The daemon serves PKCS #11 itself on a Unix socket (keywarden serve
 * --pkcs11 PATH), in p11-kit's RPC protocol (version 0). This module is a
 * client of that protocol written for the daemon: every call is one
 * request and one reply on the slot's connection (a C_*Init may go with
 * the call after it: see init), and every mechanism's
 * parameter is sent in the form the daemon reads, so whatever the daemon
 * offers (Ed25519, SHA-3, AES key wrap, ...) works through it, whatever
 * p11-kit release the machine has.
 *
 * Slots: one per socket. $KEYWARDEN_PKCS11_SOCKET lists them, separated by
 * ':' (slot 0 is the first); without it the one slot is
 * /run/keywarden/pkcs11.sock when it exists, else
 * $XDG_RUNTIME_DIR/keywarden/pkcs11.sock. A slot whose daemon does not
 * answer shows no token.
 *
 * Trust: before it sends a byte, the module checks the socket's directory
 * and the daemon's uid (SO_PEERCRED) as the Go client does (trust.go): a
 * socket another user may serve is a slot without a token. Every send and
 * receive waits at most $KEYWARDEN_PKCS11_TIMEOUT seconds (60 by default).
 *
 * Handles: the daemon's handles are per connection. A session or object
 * handle given to the caller carries its slot and the connection it was
 * made on: (slot + 1) << 56 | connection << 32 | the daemon's handle. A
 * handle of another slot, or of a connection that is gone (the daemon
 * restarted), is refused here, never sent where it could name something
 * else.
 *
 * Threads: CKF_OS_LOCKING_OK (pthreads); the threads of a process share
 * the slot's connection: each sends its request under the connection's
 * lock and waits for its reply without it, while one of the threads
 * waiting reads the replies (they come in the order of the requests) and
 * hands each to its thread. Fork: the child's calls answer
 * CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize, which opens
 * connections of its own (the daemon closes a connection another process
 * writes on); the parent's are closed in the child at the fork, never by
 * number later; the parent is unaffected. C_Finalize then C_Initialize and
 * dlclose then dlopen work.
 *
 * The module holds no key and no PIN beyond one request. It is C so that
 * no language runtime is loaded into the programs that use it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility ("default")))

_Static_assert (sizeof (CK_ULONG) == 8, "handles are encoded in 64-bit CK_ULONGs");

#define SYSTEM_SOCKET "/run/keywarden/pkcs11.sock"
#define MAX_SLOTS 16
#define MAX_REPLY (64u << 20)
/* MAX_REQUEST: the longest request body the daemon's PKCS #11 front takes
 * (its maxBody; a test of the front checks that the two agree). A longer
 * one makes the daemon end the connection, and with it every session of
 * the process: the module refuses it instead, before sending. */
#define MAX_REQUEST (1u << 20)
#define HANDSHAKE "PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"
/* How long one send or receive on a connection may wait, by default
 * ($KEYWARDEN_PKCS11_TIMEOUT overrides it, in seconds; 0: no bound). */
#define DEFAULT_TIMEOUT 60

/* Call ids of the protocol, in its order. */
enum {
	RPC_ERROR, RPC_Initialize, RPC_Finalize, RPC_GetInfo, RPC_GetSlotList, RPC_GetSlotInfo,
	RPC_GetTokenInfo, RPC_GetMechanismList, RPC_GetMechanismInfo, RPC_InitToken, RPC_OpenSession,
	RPC_CloseSession, RPC_CloseAllSessions, RPC_GetSessionInfo, RPC_InitPIN, RPC_SetPIN,
	RPC_GetOperationState, RPC_SetOperationState, RPC_Login, RPC_Logout, RPC_CreateObject,
	RPC_CopyObject, RPC_DestroyObject, RPC_GetObjectSize, RPC_GetAttributeValue,
	RPC_SetAttributeValue, RPC_FindObjectsInit, RPC_FindObjects, RPC_FindObjectsFinal,
	RPC_EncryptInit, RPC_Encrypt, RPC_EncryptUpdate, RPC_EncryptFinal, RPC_DecryptInit,
	RPC_Decrypt, RPC_DecryptUpdate, RPC_DecryptFinal, RPC_DigestInit, RPC_Digest,
	RPC_DigestUpdate, RPC_DigestKey, RPC_DigestFinal, RPC_SignInit, RPC_Sign, RPC_SignUpdate,
	RPC_SignFinal, RPC_SignRecoverInit, RPC_SignRecover, RPC_VerifyInit, RPC_Verify,
	RPC_VerifyUpdate, RPC_VerifyFinal, RPC_VerifyRecoverInit, RPC_VerifyRecover,
	RPC_DigestEncryptUpdate, RPC_DecryptDigestUpdate, RPC_SignEncryptUpdate,
	RPC_DecryptVerifyUpdate, RPC_GenerateKey, RPC_GenerateKeyPair, RPC_WrapKey, RPC_UnwrapKey,
	RPC_DeriveKey, RPC_SeedRandom, RPC_GenerateRandom, RPC_WaitForSlotEvent, RPC_MAX
};

/* The signatures of requests and replies (the daemon checks them). */
static const char *const sigs[RPC_MAX][2] = {
	[RPC_ERROR] = {"", "u"},
	[RPC_Initialize] = {"ayyay", ""},
	[RPC_GetSlotList] = {"yfu", "au"},
	[RPC_GetTokenInfo] = {"u", "ssssuuuuuuuuuuuvvs"},
	[RPC_GetMechanismList] = {"ufu", "au"},
	[RPC_GetMechanismInfo] = {"uu", "uuu"},
	[RPC_OpenSession] = {"uu", "u"},
	[RPC_CloseSession] = {"u", ""},
	[RPC_CloseAllSessions] = {"u", ""},
	[RPC_GetSessionInfo] = {"u", "uuuu"},
	[RPC_Login] = {"uuay", ""},
	[RPC_Logout] = {"u", ""},
	[RPC_CreateObject] = {"uaA", "u"},
	[RPC_CopyObject] = {"uuaA", "u"},
	[RPC_DestroyObject] = {"uu", ""},
	[RPC_GetObjectSize] = {"uu", "u"},
	[RPC_GetAttributeValue] = {"uufA", "aAu"},
	[RPC_SetAttributeValue] = {"uuaA", ""},
	[RPC_FindObjectsInit] = {"uaA", ""},
	[RPC_FindObjects] = {"ufu", "au"},
	[RPC_FindObjectsFinal] = {"u", ""},
	[RPC_EncryptInit] = {"uMu", ""},
	[RPC_Encrypt] = {"uayfy", "ay"},
	[RPC_EncryptUpdate] = {"uayfy", "ay"},
	[RPC_EncryptFinal] = {"ufy", "ay"},
	[RPC_DecryptInit] = {"uMu", ""},
	[RPC_Decrypt] = {"uayfy", "ay"},
	[RPC_DecryptUpdate] = {"uayfy", "ay"},
	[RPC_DecryptFinal] = {"ufy", "ay"},
	[RPC_DigestInit] = {"uM", ""},
	[RPC_Digest] = {"uayfy", "ay"},
	[RPC_DigestUpdate] = {"uay", ""},
	[RPC_DigestKey] = {"uu", ""},
	[RPC_DigestFinal] = {"ufy", "ay"},
	[RPC_SignInit] = {"uMu", ""},
	[RPC_Sign] = {"uayfy", "ay"},
	[RPC_SignUpdate] = {"uay", ""},
	[RPC_SignFinal] = {"ufy", "ay"},
	[RPC_VerifyInit] = {"uMu", ""},
	[RPC_Verify] = {"uayay", ""},
	[RPC_VerifyUpdate] = {"uay", ""},
	[RPC_VerifyFinal] = {"uay", ""},
	[RPC_GenerateKey] = {"uMaA", "u"},
	[RPC_GenerateKeyPair] = {"uMaAaA", "uu"},
	[RPC_WrapKey] = {"uMuufy", "ay"},
	[RPC_UnwrapKey] = {"uMuayaA", "u"},
	[RPC_DeriveKey] = {"uMuaA", "u"},
	[RPC_SeedRandom] = {"uay", ""},
	[RPC_GenerateRandom] = {"ufy", "ay"},
};

/* ---- buffers (put with v NULL only makes room) ------------------------ */

struct buf {
	unsigned char *p;
	size_t len, cap;
	int failed;
};

static void
buf_wipe (struct buf *b)
{
	if (b->p != NULL) {
		explicit_bzero (b->p, b->cap);
		free (b->p);
	}
	memset (b, 0, sizeof *b);
}

static void
put (struct buf *b, const void *v, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		unsigned char *p;
		while (cap < b->len + n)
			cap *= 2;
		if (cap > MAX_REPLY || (p = malloc (cap)) == NULL) {
			b->failed = 1;
			return;
		}
		if (b->p != NULL) {
			memcpy (p, b->p, b->len);
			explicit_bzero (b->p, b->cap);
			free (b->p);
		}
		b->p = p;
		b->cap = cap;
	}
	if (v != NULL && n > 0)
		memcpy (b->p + b->len, v, n);
	b->len += n;
}

static void put_u8 (struct buf *b, unsigned char v) { put (b, &v, 1); }

static void
put_u32 (struct buf *b, uint32_t v)
{
	unsigned char x[4] = {v >> 24, v >> 16, v >> 8, v};
	put (b, x, 4);
}

static void
put_u64 (struct buf *b, uint64_t v)
{
	put_u32 (b, v >> 32);
	put_u32 (b, (uint32_t) v);
}

/* put_array: a length and the bytes, or 0xffffffff for none. */
static void
put_array (struct buf *b, const void *v, CK_ULONG n)
{
	if (v == NULL && n == 0) {
		put_u32 (b, 0xffffffff);
		return;
	}
	if (n >= 0x7fffffff) {
		b->failed = 1;
		return;
	}
	put_u32 (b, n);
	put (b, v, n);
}

/* put_bytes: an "ay" argument. */
static void
put_bytes (struct buf *b, const void *v, CK_ULONG n)
{
	put_u8 (b, 1);
	put_array (b, v, n);
}

/* A reply being read. */
struct rd {
	const unsigned char *p;
	size_t n;
	int bad;
};

static const unsigned char *
take (struct rd *r, size_t n)
{
	const unsigned char *v;
	if (r->bad || n > r->n) {
		r->bad = 1;
		return NULL;
	}
	v = r->p;
	r->p += n;
	r->n -= n;
	return v;
}

static unsigned char
get_u8 (struct rd *r)
{
	const unsigned char *v = take (r, 1);
	return v ? v[0] : 0;
}

static uint32_t
get_u32 (struct rd *r)
{
	const unsigned char *v = take (r, 4);
	return v ? (uint32_t) v[0] << 24 | (uint32_t) v[1] << 16 | (uint32_t) v[2] << 8 | v[3] : 0;
}

static uint64_t
get_u64 (struct rd *r)
{
	uint64_t hi = get_u32 (r);
	return hi << 32 | get_u32 (r);
}

/* get_array: *none set for a null array. */
static const unsigned char *
get_array (struct rd *r, uint32_t *n, int *none)
{
	*n = get_u32 (r);
	*none = 0;
	if (r->bad)
		return NULL;
	if (*n == 0xffffffff) {
		*none = 1;
		*n = 0;
		return NULL;
	}
	return take (r, *n);
}

/* ---- state ------------------------------------------------------------ */

/* The kinds of operation a session runs, and what the module knows of
 * each in the daemon: nothing (ST_UNKNOWN: its C_*Init is sent at once),
 * none active (ST_NONE), an initialization deferred (ST_PENDING: sent
 * with the next call of that kind), or one active (ST_ACTIVE). */
enum { OP_SIGN, OP_VERIFY, OP_ENCRYPT, OP_DECRYPT, OP_DIGEST, OP_KINDS };
enum { ST_UNKNOWN, ST_NONE, ST_PENDING, ST_ACTIVE };

struct sess {
	struct sess *next;
	CK_SESSION_HANDLE h;
	unsigned char st[OP_KINDS];
	struct buf pending[OP_KINDS]; /* a deferred C_*Init's request */
	CK_MECHANISM_TYPE mech[OP_KINDS]; /* its mechanism */
	unsigned char queried[OP_KINDS];  /* a length query was answered here */
	/* The accepted initialization the operation runs (known[kidx] while
	 * its gen is kgen; kidx -1: none), where a result's length is learnt. */
	int kidx[OP_KINDS];
	uint32_t kgen[OP_KINDS];
	/* Which call last set st (a number of the slot's, never reused on
	 * the connection): a call whose reply comes after a later call of
	 * the same kind was sent leaves st to that later call. */
	uint64_t seq[OP_KINDS];
};

/* An initialization the daemon accepted on this connection: the same
 * kind, key and mechanism (with its parameter) is accepted again while
 * the key stays (see init). */
#define KNOWN_MECH 96
struct known {
	CK_OBJECT_HANDLE key; /* 0: none (a digest) */
	int kind;             /* -1: an empty entry */
	uint32_t gen;         /* which entry this is (the slot's known_gen when made) */
	CK_MECHANISM_TYPE type;
	/* The length of the results, as the daemon gave one (0: not known
	 * yet; see learn_length): every one (len), or for AES-GCM
	 * encryption the data's plus extra. */
	CK_ULONG len, extra;
	int has_extra;
	size_t n;
	unsigned char mech[KNOWN_MECH];
};

#define SESS_BUCKETS 64
#define KNOWN_INITS 32

struct slot {
	char path[sizeof ((struct sockaddr_un *) 0)->sun_path];
	pthread_mutex_t lock;
	int fd;             /* -1: not connected */
	uint32_t conn;      /* which connection: part of every handle */
	CK_ULONG daemon_id; /* the daemon's slot id */
	uint32_t code;
	int refused;        /* a refusal was reported (once per C_Initialize) */
	/* Replies: the threads that sent requests wait in qhead..qtail, in the
	 * order of their requests; one of them at a time (reading) reads what
	 * the daemon answers and hands each reply to its thread. qlock guards
	 * them (lock is not held while waiting: others send meanwhile). */
	pthread_mutex_t qlock;
	struct waiter *qhead, *qtail;
	int reading;
	/* The reader's (see read_replies): how long its last receive waited
	 * (ns), and how many receives are still to sleep at once after polls
	 * that found nothing (skip), the next such run's length (backoff). */
	uint64_t last_wait;
	unsigned skip, backoff;
	int broken;         /* the connection failed: shut down, closed once no one uses it */
	struct buf rx;      /* read and not yet handed over (the reader's) */
	/* The connection's sessions and accepted initializations. */
	struct sess *sess[SESS_BUCKETS];
	struct known known[KNOWN_INITS];
	unsigned next_known;
	uint32_t known_gen; /* the last known.gen given */
	uint64_t seq;       /* the last sess.seq given */
	int gone;           /* C_Finalize is closing the slot */
};

struct module {
	pid_t pid;
	uid_t self;         /* getuid () */
	uid_t named;        /* $KEYWARDEN_DAEMON_UID; 0: none */
	long timeout;       /* seconds; 0: no bound */
	int nslots;
	struct slot slots[MAX_SLOTS];
};

static void sess_forget_all (struct slot *s);

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
/* mod is set by C_Initialize, cleared by C_Finalize. A child of a fork
 * sees its parent's, with another pid: not initialized for it. */
static struct module *mod;
/* The process that made mod (its pid field, kept apart): current() reads
 * it without touching mod, which C_Finalize may free under a caller that
 * did not enter(). */
static pid_t mod_pid;
/* fork_mark is a page the kernel fills with zeros in the child of any
 * fork (MADV_WIPEONFORK, Linux 4.14+), one that runs no pthread_atfork
 * handler too (_Fork, a raw clone): C_Initialize sets its first byte, so
 * while it is set the process is the one that made mod, and current()
 * needs no getpid (a system call, on every call of the module). Where the
 * kernel does not offer it, NULL: getpid () every time. (Processes that
 * share their memory without being threads of one process, clone with
 * CLONE_VM alone, share the mark and count as one.) */
static unsigned char *fork_mark;

/* users counts the threads inside calls that hold a module (from enter to
 * leave): C_Finalize, once mod is cleared, waits until none is left before
 * it frees the module, its locks and its buffers. */
static unsigned users;
static int finalizing;
static pthread_mutex_t users_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t users_gone = PTHREAD_COND_INITIALIZER;

/* polling: a thread of the process polls a socket for replies (see
 * read_replies). */
static int polling;

/* In the child of a fork, the parent's connections are the parent's: their
 * descriptors are closed here, while their numbers are still the module's
 * (a child may close its descriptors and open others with the same
 * numbers before it calls C_Initialize, which then only forgets them).
 * Their locks, which another thread of the parent may have held at the
 * fork, are left alone. close () is async-signal-safe. */
static void
after_fork_child (void)
{
	struct module *m = __atomic_load_n (&mod, __ATOMIC_ACQUIRE);
	int i;

	pthread_mutex_init (&init_lock, NULL);
	/* The other threads are the parent's. */
	users = 0;
	finalizing = 0;
	polling = 0;
	pthread_mutex_init (&users_lock, NULL);
	pthread_cond_init (&users_gone, NULL);
	if (m == NULL)
		return;
	for (i = 0; i < m->nslots; i++) {
		if (m->slots[i].fd >= 0)
			close (m->slots[i].fd);
		m->slots[i].fd = -1;
	}
}

__attribute__((constructor)) static void
module_load (void)
{
	void *p;
	pthread_atfork (NULL, NULL, after_fork_child);
	p = mmap (NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return;
#ifdef MADV_WIPEONFORK
	if (madvise (p, 4096, MADV_WIPEONFORK) == 0) {
		fork_mark = p;
		return;
	}
#endif
	munmap (p, 4096);
}

/* A module unloaded without C_Finalize closes its connections. */
__attribute__((destructor)) static void
module_unload (void)
{
	int i;
	if (fork_mark != NULL)
		munmap (fork_mark, 4096);
	fork_mark = NULL;
	if (mod == NULL || mod->pid != getpid ())
		return;
	for (i = 0; i < mod->nslots; i++) {
		if (mod->slots[i].fd >= 0)
			close (mod->slots[i].fd);
		sess_forget_all (&mod->slots[i]);
	}
	free (mod);
	mod = NULL;
}

static struct module *
current (void)
{
	struct module *m = __atomic_load_n (&mod, __ATOMIC_SEQ_CST);
	if (m == NULL)
		return NULL;
	if (fork_mark != NULL && __atomic_load_n (fork_mark, __ATOMIC_SEQ_CST) != 0)
		return m; /* no fork since this process's C_Initialize */
	if (__atomic_load_n (&mod_pid, __ATOMIC_SEQ_CST) != getpid ())
		return NULL;
	return m;
}

/* leave ends what enter began. */
static void
leave (void)
{
	if (__atomic_sub_fetch (&users, 1, __ATOMIC_SEQ_CST) == 0 && __atomic_load_n (&finalizing, __ATOMIC_SEQ_CST)) {
		pthread_mutex_lock (&users_lock);
		pthread_cond_broadcast (&users_gone);
		pthread_mutex_unlock (&users_lock);
	}
}

/* enter is current () for a call that uses the module: it stays until
 * leave (C_Finalize waits). users is counted before mod is read, and
 * C_Finalize clears mod before it reads users: one of them sees the
 * other. */
static struct module *
enter (void)
{
	struct module *m;
	__atomic_add_fetch (&users, 1, __ATOMIC_SEQ_CST);
	m = current ();
	if (m == NULL)
		leave ();
	return m;
}

static int
add_slot (struct module *m, const char *p, size_t n)
{
	struct slot *s;
	if (n == 0)
		return 0;
	if (m->nslots == MAX_SLOTS || n >= sizeof s->path)
		return -1;
	s = &m->slots[m->nslots++];
	memcpy (s->path, p, n);
	s->path[n] = '\0';
	return 0;
}

static int
find_sockets (struct module *m)
{
	const char *p = secure_getenv ("KEYWARDEN_PKCS11_SOCKET");
	char buf[4096];
	struct stat st;

	if (p != NULL && p[0] != '\0') {
		while (*p != '\0') {
			const char *e = strchrnul (p, ':');
			if (add_slot (m, p, e - p) != 0)
				return -1;
			p = *e ? e + 1 : e;
		}
		return m->nslots > 0 ? 0 : -1;
	}
	if (stat (SYSTEM_SOCKET, &st) != 0 || !S_ISSOCK (st.st_mode)) {
		p = secure_getenv ("XDG_RUNTIME_DIR");
		if (p != NULL && p[0] == '/' &&
		    snprintf (buf, sizeof buf, "%s/keywarden/pkcs11.sock", p) < (int) sizeof buf)
			return add_slot (m, buf, strlen (buf));
	}
	return add_slot (m, SYSTEM_SOCKET, strlen (SYSTEM_SOCKET));
}

/* ---- handles ---------------------------------------------------------- */

static CK_ULONG
handle_of (int slot, uint32_t conn, uint64_t h)
{
	return (CK_ULONG) (slot + 1) << 56 | (CK_ULONG) (conn & 0xffffff) << 32 | h;
}

static int
slot_of (struct module *m, CK_ULONG h)
{
	int i = (int) (h >> 56) - 1;
	return i >= 0 && i < m->nslots ? i : -1;
}

/* ---- whom the module trusts with what it sends ------------------------ */

/* The module sends the daemon PINs, plaintext and data to sign. Another
 * local user must not be able to stand in for the daemon, so before it
 * sends a byte the module checks what the Go client checks (trust.go):
 * the socket's directory, and the uid of whoever serves the socket. It
 * trusts root, the caller's own uid, the uid $KEYWARDEN_DAEMON_UID names,
 * and the owner of the socket's directory when root vouches for it. */

static int
trusts (const struct module *m, uid_t vouched, uid_t uid)
{
	return uid == 0 || uid == m->self || (m->named != 0 && uid == m->named) ||
	       (vouched != 0 && uid == vouched);
}

/* parse_uint reads a decimal number of at most max, the whole of p. */
static int
parse_uint (const char *p, unsigned long max, unsigned long *out)
{
	unsigned long n = 0;
	if (*p == '\0')
		return -1;
	for (; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || n > (max - (unsigned long) (*p - '0')) / 10)
			return -1;
		n = n * 10 + (unsigned long) (*p - '0');
	}
	*out = n;
	return 0;
}

/* first_login_uid is the first uid of people's accounts: UID_MIN of
 * /etc/login.defs, else 1000. */
static uid_t
first_login_uid (void)
{
	FILE *f = fopen ("/etc/login.defs", "re");
	char line[512];
	uid_t uid = 1000;

	if (f == NULL)
		return uid;
	while (fgets (line, sizeof line, f) != NULL) {
		char a[64], b[64], c[2];
		unsigned long n;
		if (sscanf (line, "%63s %63s %1s", a, b, c) == 2 && strcmp (a, "UID_MIN") == 0 &&
		    parse_uint (b, 0xffffffffUL, &n) == 0 && n > 0) {
			uid = (uid_t) n;
			break;
		}
	}
	fclose (f);
	return uid;
}

/* clean_absolute: path is absolute, with no empty, "." or ".." part and no
 * trailing '/' (what Go's filepath.Clean leaves as it is). */
static int
clean_absolute (const char *path)
{
	const char *p = path;
	if (*p != '/')
		return 0;
	if (p[1] == '\0')
		return 1;
	while (*p == '/') {
		const char *e = strchrnul (p + 1, '/');
		size_t n = e - (p + 1);
		if (n == 0 || (n == 1 && p[1] == '.') || (n == 2 && p[1] == '.' && p[2] == '.'))
			return 0;
		p = e;
	}
	return 1;
}

/* vouched reports whether root vouches for the owner of the socket's
 * directory dir: the socket's path is absolute and clean, dir is a real
 * directory directly in /run (root's), neither may be written by others,
 * and dir's owner is a system account (below UID_MIN). */
static int
vouched (const char *path, const char *dir)
{
	struct stat st;
	const char *slash = strrchr (dir, '/');

	if (!clean_absolute (path) || slash == NULL || slash - dir != 4 || strncmp (dir, "/run/", 5) != 0)
		return 0;
	if (lstat ("/run", &st) != 0 || !S_ISDIR (st.st_mode) || (st.st_mode & 022) != 0 || st.st_uid != 0)
		return 0;
	if (lstat (dir, &st) != 0 || !S_ISDIR (st.st_mode) || (st.st_mode & 022) != 0 ||
	    st.st_uid >= first_login_uid ())
		return 0;
	return 1;
}

/* refuse reports a refused socket, once per slot and C_Initialize. It
 * names paths and uids only. */
static void
refuse (struct slot *s, const char *fmt, ...) __attribute__((format (printf, 2, 3)));

static void
refuse (struct slot *s, const char *fmt, ...)
{
	va_list ap;
	if (s->refused)
		return;
	s->refused = 1;
	va_start (ap, fmt);
	fputs ("keywarden-pkcs11: ", stderr);
	vfprintf (stderr, fmt, ap);
	fputs ("\n", stderr);
	va_end (ap);
}

/* check_dir examines the socket's directory before connecting: whoever
 * made it, or may write to it, could have put a socket of their own there.
 * A directory that cannot be examined is left to connect () to report.
 * *vouched_uid is set to its owner when root vouches for it. */
static int
check_dir (const struct module *m, struct slot *s, uid_t *vouched_uid)
{
	char dir[sizeof s->path];
	char *slash = strrchr (s->path, '/');
	struct stat st;

	*vouched_uid = 0;
	if (slash == NULL)
		strcpy (dir, ".");
	else if (slash == s->path)
		strcpy (dir, "/");
	else {
		memcpy (dir, s->path, slash - s->path);
		dir[slash - s->path] = '\0';
	}
	if (lstat (dir, &st) != 0)
		return 0;
	if (S_ISLNK (st.st_mode)) {
		if (!trusts (m, 0, st.st_uid)) {
			refuse (s, "the socket's directory %s is a symbolic link made by uid %u, not by root, "
			        "you or $KEYWARDEN_DAEMON_UID: refusing to connect to %s (if uid %u runs the "
			        "daemon you mean, set KEYWARDEN_DAEMON_UID=%u)", dir, (unsigned) st.st_uid,
			        s->path, (unsigned) st.st_uid, (unsigned) st.st_uid);
			return -1;
		}
		if (stat (dir, &st) != 0)
			return 0;
	}
	if (!S_ISDIR (st.st_mode))
		return 0;
	if (!trusts (m, 0, st.st_uid)) {
		if (!vouched (s->path, dir)) {
			refuse (s, "the socket's directory %s belongs to uid %u, not to root, you or "
			        "$KEYWARDEN_DAEMON_UID: refusing to connect to %s (if uid %u runs the daemon "
			        "you mean, set KEYWARDEN_DAEMON_UID=%u)", dir, (unsigned) st.st_uid, s->path,
			        (unsigned) st.st_uid, (unsigned) st.st_uid);
			return -1;
		}
		*vouched_uid = st.st_uid;
	}
	if ((st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0) {
		refuse (s, "the socket's directory %s is writable by others (mode %04o): refusing to "
		        "connect to %s (its owner can fix it with chmod go-w %s)", dir,
		        (unsigned) (st.st_mode & 07777), s->path, dir);
		return -1;
	}
	return 0;
}

/* check_peer checks who serves the connected socket, as the kernel
 * recorded it when the daemon called listen (). */
static int
check_peer (const struct module *m, struct slot *s, uid_t vouched_uid)
{
	struct ucred cr;
	socklen_t len = sizeof cr;

	if (getsockopt (s->fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || len != sizeof cr) {
		refuse (s, "cannot tell who serves %s: refusing to send anything", s->path);
		return -1;
	}
	if (trusts (m, vouched_uid, cr.uid))
		return 0;
	refuse (s, "the socket %s is served by uid %u (pid %d), not by root, you or "
	        "$KEYWARDEN_DAEMON_UID: refusing to send anything (if uid %u runs the daemon you "
	        "mean, set KEYWARDEN_DAEMON_UID=%u)", s->path, (unsigned) cr.uid, (int) cr.pid,
	        (unsigned) cr.uid, (unsigned) cr.uid);
	return -1;
}

/* ---- what the module knows of the daemon's sessions ------------------ */

/* All called with the slot locked. */

static struct sess **
sess_bucket (struct slot *s, CK_SESSION_HANDLE h)
{
	return &s->sess[(h ^ h >> 7) % SESS_BUCKETS];
}

static struct sess *
sess_find (struct slot *s, CK_SESSION_HANDLE h)
{
	struct sess *e;
	for (e = *sess_bucket (s, h); e != NULL; e = e->next)
		if (e->h == h)
			return e;
	return NULL;
}

static void
sess_free (struct sess *e)
{
	int k;
	for (k = 0; k < OP_KINDS; k++)
		buf_wipe (&e->pending[k]);
	free (e);
}

/* sess_add records a session just opened: no operation active. Without
 * memory it is not recorded, and its operations are initialized at once. */
static void
sess_add (struct slot *s, CK_SESSION_HANDLE h)
{
	struct sess **b = sess_bucket (s, h);
	struct sess *e = calloc (1, sizeof *e);
	int k;
	if (e == NULL)
		return;
	e->h = h;
	for (k = 0; k < OP_KINDS; k++) {
		e->st[k] = ST_NONE;
		e->kidx[k] = -1;
	}
	e->next = *b;
	*b = e;
}

static void
sess_remove (struct slot *s, CK_SESSION_HANDLE h)
{
	struct sess **p;
	for (p = sess_bucket (s, h); *p != NULL; p = &(*p)->next) {
		if ((*p)->h == h) {
			struct sess *e = *p;
			*p = e->next;
			sess_free (e);
			return;
		}
	}
}

/* set_st sets what the module knows of an operation of a session, and
 * returns the number that says this call set it. Called with the slot
 * locked. */
static uint64_t
set_st (struct slot *s, struct sess *e, int kind, int st)
{
	e->st[kind] = st;
	return e->seq[kind] = ++s->seq;
}

static void
known_clear (struct slot *s)
{
	int i;
	for (i = 0; i < KNOWN_INITS; i++)
		s->known[i].kind = -1;
}

static void
sess_forget_all (struct slot *s)
{
	int i;
	for (i = 0; i < SESS_BUCKETS; i++) {
		while (s->sess[i] != NULL) {
			struct sess *e = s->sess[i];
			s->sess[i] = e->next;
			sess_free (e);
		}
	}
	known_clear (s);
}

/* known_find: the index of the entry, or -1. */
static int
known_find (struct slot *s, CK_OBJECT_HANDLE key, int kind, const unsigned char *m, size_t n)
{
	int i;
	for (i = 0; i < KNOWN_INITS; i++) {
		struct known *k = &s->known[i];
		if (k->kind == kind && k->key == key && k->n == n && memcmp (k->mech, m, n) == 0)
			return i;
	}
	return -1;
}

/* known_add: the index of the entry, or -1 (a mechanism too long to keep). */
static int
known_add (struct slot *s, CK_OBJECT_HANDLE key, int kind, CK_MECHANISM_TYPE type, const unsigned char *m, size_t n)
{
	struct known *k;
	int i;
	if (n > KNOWN_MECH)
		return -1;
	if ((i = known_find (s, key, kind, m, n)) >= 0)
		return i;
	i = s->next_known++ % KNOWN_INITS;
	k = &s->known[i];
	memset (k, 0, sizeof *k);
	k->key = key;
	k->kind = kind;
	k->gen = ++s->known_gen;
	k->type = type;
	k->n = n;
	memcpy (k->mech, m, n);
	return i;
}

/* op_known: the accepted initialization e's operation of kind runs, or
 * NULL (not known, or forgotten since). */
static struct known *
op_known (struct slot *s, struct sess *e, int kind)
{
	struct known *k;
	if (e->kidx[kind] < 0)
		return NULL;
	k = &s->known[e->kidx[kind]];
	return k->kind == kind && k->gen == e->kgen[kind] ? k : NULL;
}

static void
set_known (struct slot *s, struct sess *e, int kind, int i)
{
	e->kidx[kind] = i;
	e->kgen[kind] = i >= 0 ? s->known[i].gen : 0;
}

/* unsure: a return value after which the module cannot tell whether the
 * daemon still has the operation (the connection failed, the reply did
 * not decode, ...): the next C_*Init is then sent at once. */
static int
unsure (CK_RV rv)
{
	switch (rv) {
	case CKR_DEVICE_ERROR: case CKR_DEVICE_REMOVED: case CKR_HOST_MEMORY: case CKR_GENERAL_ERROR:
	case CKR_SESSION_HANDLE_INVALID: case CKR_SESSION_CLOSED: case CKR_CRYPTOKI_NOT_INITIALIZED:
	case CKR_ARGUMENTS_BAD: case CKR_TOKEN_NOT_PRESENT:
		return 1;
	}
	return 0;
}

/* ---- the connection --------------------------------------------------- */

static int
write_all (int fd, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send (fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= w;
	}
	return 0;
}

static int
read_all (int fd, unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = recv (fd, p, n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= r;
	}
	return 0;
}

static void
disconnect (struct slot *s)
{
	if (s->fd >= 0)
		close (s->fd);
	s->fd = -1;
	buf_wipe (&s->rx);
}

/* broken is written under qlock, and read under the slot's lock alone:
 * atomically. */
static int
is_broken (struct slot *s)
{
	return __atomic_load_n (&s->broken, __ATOMIC_ACQUIRE);
}

/* reserve makes room for n more bytes past b->len. */
static void
reserve (struct buf *b, size_t n)
{
	put (b, NULL, n);
	if (!b->failed)
		b->len -= n;
}

/* A thread waiting for the replies of the requests it sent. */
struct waiter {
	struct waiter *next;
	int n, got;
	uint32_t codes[2];
	struct buf *replies[2];
	int done;
	CK_RV rv;
	pthread_cond_t cv;
};

/* fail_all ends the connection: it is shut down (which wakes a thread
 * blocked on it) and every waiting thread gets CKR_DEVICE_REMOVED; it is
 * closed by close_broken once no thread uses it. Called with qlock held. */
static void
fail_all (struct slot *s)
{
	struct waiter *w;
	if (!s->broken && s->fd >= 0)
		shutdown (s->fd, SHUT_RDWR);
	__atomic_store_n (&s->broken, 1, __ATOMIC_RELEASE);
	while ((w = s->qhead) != NULL) {
		s->qhead = w->next;
		w->done = 1;
		w->rv = CKR_DEVICE_REMOVED;
		pthread_cond_signal (&w->cv);
	}
	s->qtail = NULL;
}

/* close_broken closes a failed connection once no thread waits on it.
 * Called with the slot locked. */
static void
close_broken (struct slot *s)
{
	pthread_mutex_lock (&s->qlock);
	if (s->broken && s->qhead == NULL && !s->reading) {
		disconnect (s);
		__atomic_store_n (&s->broken, 0, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock (&s->qlock);
}

/* hand_over gives the frames whole in rx to their threads, in order.
 * Called with qlock held; -1 on a reply that is not the one awaited. */
static int
hand_over (struct slot *s)
{
	size_t pos = 0;
	int rv = 0;

	while (s->rx.len - pos >= 12) {
		const unsigned char *h = s->rx.p + pos;
		uint32_t code = (uint32_t) h[0] << 24 | h[1] << 16 | h[2] << 8 | h[3];
		uint32_t olen = (uint32_t) h[4] << 24 | h[5] << 16 | h[6] << 8 | h[7];
		uint32_t blen = (uint32_t) h[8] << 24 | h[9] << 16 | h[10] << 8 | h[11];
		struct waiter *w = s->qhead;
		struct buf *r;

		if (w == NULL || code != w->codes[w->got] || olen > 4096 || blen > MAX_REPLY) {
			rv = -1;
			break;
		}
		if (s->rx.len - pos < 12 + (size_t) olen + blen)
			break;
		r = w->replies[w->got];
		r->len = 0;
		r->failed = 0;
		put (r, h + 12 + olen, blen);
		if (r->failed) {
			rv = -1;
			break;
		}
		pos += 12 + (size_t) olen + blen;
		if (++w->got == w->n) {
			s->qhead = w->next;
			if (s->qhead == NULL)
				s->qtail = NULL;
			w->done = 1;
			w->rv = CKR_OK;
			pthread_cond_signal (&w->cv);
		}
	}
	/* What is left is the start of a frame. */
	if (pos > 0) {
		memmove (s->rx.p, s->rx.p + pos, s->rx.len - pos);
		explicit_bzero (s->rx.p + s->rx.len - pos, pos);
		s->rx.len -= pos;
	}
	return rv;
}

/* Polling for replies. A thread that sleeps in recv is woken when the
 * reply comes, and on a virtual machine waking a sleeping thread (its
 * idle virtual CPU) can take longer than the daemon's whole answer. So
 * the reading thread first polls the socket, for up to SPIN_NS, while
 * the daemon has been answering quickly: when the last wait took more
 * than twice that (a slow operation), it sleeps at once and burns no
 * processor. A poll that ends with nothing (the daemon was slow, or had
 * no processor: a machine busy with other work), or that lost its own
 * processor to another thread for more than GAP_NS, makes the next receives
 * sleep at once, 1, 2, 4, ... up to MAX_BACKOFF of them, until a poll
 * finds its reply again. One thread of the process polls at a time
 * (polling): the others sleep, so that threads waiting on several slots
 * do not take the processors the daemon and the program need. */
#define SPIN_NS 100000u
#define GAP_NS 20000u
#define MAX_BACKOFF 64u

static uint64_t
mono_ns (void)
{
	struct timespec ts;
	clock_gettime (CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* read_replies is one recv by the reading thread, without qlock: as much
 * as has come (only replies to requests sent can be there), handed over.
 * It polls first (see polling) when the last wait was short. */
static int
read_replies (struct slot *s)
{
	size_t want = 4096;
	ssize_t r = -1;
	uint64_t start;
	int got = 0;

	if (s->rx.len >= 12) {
		const unsigned char *h = s->rx.p;
		size_t need = 12 + ((size_t) ((uint32_t) h[4] << 24 | h[5] << 16 | h[6] << 8 | h[7]) +
		                    (size_t) ((uint32_t) h[8] << 24 | h[9] << 16 | h[10] << 8 | h[11]));
		if (need <= 12 + 4096 + (size_t) MAX_REPLY && need - s->rx.len > want)
			want = need - s->rx.len;
	}
	reserve (&s->rx, want);
	if (s->rx.failed)
		return -1;
	start = mono_ns ();
	if (s->skip > 0) {
		s->skip--;
	} else if (s->last_wait < 2 * SPIN_NS && !__atomic_exchange_n (&polling, 1, __ATOMIC_ACQUIRE)) {
		uint64_t prev = start, now;
		for (;;) {
			r = recv (s->fd, s->rx.p + s->rx.len, s->rx.cap - s->rx.len, MSG_DONTWAIT);
			if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
				got = 1;
				break;
			}
			/* A long gap between two polls: the thread lost its
			 * processor to another, which the polling delayed. */
			now = mono_ns ();
			if (now - start > SPIN_NS || now - prev > GAP_NS)
				break;
			prev = now;
		}
		__atomic_store_n (&polling, 0, __ATOMIC_RELEASE);
		if (got) {
			s->backoff = 0;
		} else {
			s->backoff = s->backoff == 0 ? 1 : s->backoff < MAX_BACKOFF ? 2 * s->backoff : MAX_BACKOFF;
			s->skip = s->backoff;
		}
	}
	if (!got) {
		do
			r = recv (s->fd, s->rx.p + s->rx.len, s->rx.cap - s->rx.len, 0);
		while (r < 0 && errno == EINTR);
	}
	s->last_wait = mono_ns () - start;
	if (r <= 0)
		return -1;
	s->rx.len += r;
	return 0;
}

/* exchange_n sends n requests (each a frame: a header of 12 bytes, which
 * it fills, and a body) in one write, and waits for their replies'
 * bodies in replies. A daemon answers the frames of a connection in
 * order, so n > 1 is one round trip where n calls one after the other
 * would be n; and the threads of a process send their requests while
 * others wait for replies, so the daemon takes them together and answers
 * them in one write. Called with the slot locked and connected; the lock
 * is let go while the thread waits (unless keep_lock: a connection being
 * set up), and held again on return. */
static CK_RV
exchange_n (struct slot *s, struct buf **reqs, struct buf **replies, int n, int keep_lock)
{
	struct iovec iov[2];
	struct msghdr mh;
	struct waiter w;
	size_t sent = 0, total = 0;
	int i, failed = 0;

	if (is_broken (s))
		close_broken (s);
	if (is_broken (s) || s->fd < 0)
		return CKR_DEVICE_REMOVED;
	memset (&w, 0, sizeof w);
	w.n = n;
	for (i = 0; i < n; i++) {
		struct buf *b = reqs[i];
		uint32_t blen, code;
		if (b->failed || b->len < 12)
			return CKR_HOST_MEMORY;
		blen = b->len - 12;
		code = w.codes[i] = ++s->code;
		b->p[0] = code >> 24; b->p[1] = code >> 16; b->p[2] = code >> 8; b->p[3] = code;
		memset (b->p + 4, 0, 4);
		b->p[8] = blen >> 24; b->p[9] = blen >> 16; b->p[10] = blen >> 8; b->p[11] = blen;
		iov[i].iov_base = b->p;
		iov[i].iov_len = b->len;
		total += b->len;
		w.replies[i] = replies[i];
	}
	pthread_cond_init (&w.cv, NULL);
	pthread_mutex_lock (&s->qlock);
	if (s->qtail != NULL)
		s->qtail->next = &w;
	else
		s->qhead = &w;
	s->qtail = &w;
	pthread_mutex_unlock (&s->qlock);
	/* One sendmsg for all the frames; a short write goes on where it
	 * stopped. */
	memset (&mh, 0, sizeof mh);
	mh.msg_iov = iov;
	mh.msg_iovlen = n;
	while (sent < total) {
		ssize_t wr = sendmsg (s->fd, &mh, MSG_NOSIGNAL);
		if (wr < 0 && errno == EINTR)
			continue;
		if (wr <= 0) {
			failed = 1;
			break;
		}
		sent += wr;
		while (wr > 0 && mh.msg_iovlen > 0) {
			if ((size_t) wr >= mh.msg_iov[0].iov_len) {
				wr -= mh.msg_iov[0].iov_len;
				mh.msg_iov++;
				mh.msg_iovlen--;
			} else {
				mh.msg_iov[0].iov_base = (char *) mh.msg_iov[0].iov_base + wr;
				mh.msg_iov[0].iov_len -= wr;
				wr = 0;
			}
		}
	}
	if (!keep_lock)
		pthread_mutex_unlock (&s->lock);
	pthread_mutex_lock (&s->qlock);
	/* A write that failed ends the connection, unless another thread
	 * ended it already (its waiters told): the connection may be a new
	 * one by now, which this thread never used. */
	if (failed && !w.done)
		fail_all (s);
	while (!w.done) {
		if (!s->reading) {
			int rv;
			s->reading = 1;
			pthread_mutex_unlock (&s->qlock);
			rv = read_replies (s);
			pthread_mutex_lock (&s->qlock);
			s->reading = 0;
			if (rv != 0 || hand_over (s) != 0)
				fail_all (s);
		} else {
			pthread_cond_wait (&w.cv, &s->qlock);
		}
	}
	/* Another thread waiting takes over the reading. */
	if (s->qhead != NULL && !s->reading)
		pthread_cond_signal (&s->qhead->cv);
	pthread_mutex_unlock (&s->qlock);
	pthread_cond_destroy (&w.cv);
	if (!keep_lock)
		pthread_mutex_lock (&s->lock);
	if (is_broken (s))
		close_broken (s);
	return w.rv;
}

/* exchange sends one request and waits for its reply. */
static CK_RV
exchange (struct slot *s, struct buf *req, struct buf *reply)
{
	return exchange_n (s, &req, &reply, 1, 0);
}

/* begin starts a request: room for the frame's header, then the call's id
 * and signature. */
static void
begin (struct buf *b, int id)
{
	b->len = 0;
	b->failed = 0;
	put (b, NULL, 12);
	put_u32 (b, id);
	put_array (b, sigs[id][0], strlen (sigs[id][0]));
}

/* too_long: the request's body is longer than the daemon takes. */
static int
too_long (const struct buf *b)
{
	return b->len > 12 + (size_t) MAX_REQUEST;
}

/* too_long_rv: what a call too long for the daemon returns: its data
 * (or ciphertext, or wrapped key) out of range for the calls that take
 * some, and CKR_ARGUMENTS_BAD for the others (a template too long). A
 * mechanism parameter too long is refused before, by put_mechanism. */
static CK_RV
too_long_rv (int id)
{
	switch (id) {
	case RPC_Decrypt: case RPC_DecryptUpdate: case RPC_DecryptDigestUpdate: case RPC_DecryptVerifyUpdate:
		return CKR_ENCRYPTED_DATA_LEN_RANGE;
	case RPC_UnwrapKey:
		return CKR_WRAPPED_KEY_LEN_RANGE;
	case RPC_Encrypt: case RPC_EncryptUpdate: case RPC_Sign: case RPC_SignUpdate: case RPC_Verify:
	case RPC_VerifyUpdate: case RPC_Digest: case RPC_DigestUpdate: case RPC_DigestEncryptUpdate:
	case RPC_SignEncryptUpdate:
		return CKR_DATA_LEN_RANGE;
	}
	return CKR_ARGUMENTS_BAD;
}

/* check_reply reads a reply's header: the call's return value. */
static CK_RV
check_reply (struct buf *reply, int id, struct rd *r)
{
	uint32_t n;
	int none;
	const unsigned char *sig;
	uint32_t got;

	r->p = reply->p;
	r->n = reply->len;
	r->bad = 0;
	got = get_u32 (r);
	sig = get_array (r, &n, &none);
	if (r->bad)
		return CKR_DEVICE_ERROR;
	if (got == RPC_ERROR) {
		CK_RV rv;
		if (n != 1 || sig[0] != 'u')
			return CKR_DEVICE_ERROR;
		rv = get_u64 (r);
		return r->bad || rv == CKR_OK ? CKR_DEVICE_ERROR : rv;
	}
	if (got != (uint32_t) id || n != strlen (sigs[id][1]) || (n > 0 && memcmp (sig, sigs[id][1], n) != 0))
		return CKR_DEVICE_ERROR;
	return CKR_OK;
}

/* connect_slot opens the slot's connection: version byte, C_Initialize,
 * and the daemon's slot id. Called with the slot locked. */
static CK_RV
connect_slot (struct module *m, struct slot *s)
{
	struct sockaddr_un sa;
	struct buf req = {0}, reply = {0};
	struct rd r;
	unsigned char v = 0;
	CK_RV rv;
	uint32_t n;
	uid_t vouched_uid;
	struct timeval tv = { m->timeout, 0 };

	if (is_broken (s))
		close_broken (s);
	if (is_broken (s))
		return CKR_DEVICE_REMOVED; /* closed once the threads waiting on it are told */
	if (s->fd >= 0)
		return CKR_OK;
	if (s->gone)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	memset (&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy (sa.sun_path, s->path, sizeof sa.sun_path);
	if (check_dir (m, s, &vouched_uid) != 0)
		return CKR_TOKEN_NOT_PRESENT;
	s->fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		return CKR_DEVICE_ERROR;
	/* A daemon that hangs must not hang the program: every send and
	 * receive (and connect) waits at most the timeout, after which the
	 * connection is dropped as if the daemon had gone. */
	if (m->timeout > 0 &&
	    (setsockopt (s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
	     setsockopt (s->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)) {
		disconnect (s);
		return CKR_DEVICE_ERROR;
	}
	if (connect (s->fd, (struct sockaddr *) &sa, sizeof sa) != 0 || check_peer (m, s, vouched_uid) != 0 ||
	    write_all (s->fd, &v, 1) != 0 || read_all (s->fd, &v, 1) != 0 || v != 0) {
		disconnect (s);
		return CKR_TOKEN_NOT_PRESENT;
	}
	s->conn++;
	sess_forget_all (s);
	begin (&req, RPC_Initialize);
	put_bytes (&req, HANDSHAKE, strlen (HANDSHAKE));
	put_u8 (&req, 0);
	put_bytes (&req, "", 0);
	rv = exchange_n (s, (struct buf *[]) { &req }, (struct buf *[]) { &reply }, 1, 1);
	if (rv == CKR_OK)
		rv = check_reply (&reply, RPC_Initialize, &r);
	if (rv == CKR_OK) {
		begin (&req, RPC_GetSlotList);
		put_u8 (&req, 1);
		put_u32 (&req, 1);
		rv = exchange_n (s, (struct buf *[]) { &req }, (struct buf *[]) { &reply }, 1, 1);
	}
	if (rv == CKR_OK)
		rv = check_reply (&reply, RPC_GetSlotList, &r);
	if (rv == CKR_OK) {
		int present = get_u8 (&r);
		n = get_u32 (&r);
		if (!present || n != 1)
			rv = CKR_TOKEN_NOT_PRESENT;
		else
			s->daemon_id = get_u64 (&r);
		if (r.bad)
			rv = CKR_DEVICE_ERROR;
	}
	buf_wipe (&req);
	buf_wipe (&reply);
	if (rv != CKR_OK) {
		disconnect (s);
		return rv == CKR_DEVICE_REMOVED ? CKR_TOKEN_NOT_PRESENT : rv;
	}
	return CKR_OK;
}

/* ---- calls ------------------------------------------------------------ */

/* A call in progress: the request, and after call() the reply to read. */
struct call {
	struct module *m;
	int slot;
	uint32_t conn;
	int id;
	CK_SESSION_HANDLE h;
	int sent;     /* the request went to the daemon */
	int sizeq;    /* a length query (no output buffer) */
	int deferred; /* a deferred C_*Init failed: its error is the call's */
	uint64_t seq; /* the session's seq of the operation once sent (0: none) */
	/* learn: the operation the call was sent to is known[kidx] of gen
	 * kgen (its initialization known when the call was sent); fresh: its
	 * C_*Init went with the call (the daemon kept no result of it). */
	int learn, fresh, kidx;
	uint32_t kgen;
	struct buf req, reply;
	struct rd r;
};

/* The calls of operations: their kind, and what they do to it. */
enum { OC_NONE, OC_INIT, OC_FINAL, OC_UPDATE, OC_VERIFY };
static const struct { signed char kind, cls; } opcall[RPC_MAX] = {
	[RPC_SignInit] = {OP_SIGN, OC_INIT}, [RPC_Sign] = {OP_SIGN, OC_FINAL},
	[RPC_SignUpdate] = {OP_SIGN, OC_UPDATE}, [RPC_SignFinal] = {OP_SIGN, OC_FINAL},
	[RPC_VerifyInit] = {OP_VERIFY, OC_INIT}, [RPC_Verify] = {OP_VERIFY, OC_VERIFY},
	[RPC_VerifyUpdate] = {OP_VERIFY, OC_UPDATE}, [RPC_VerifyFinal] = {OP_VERIFY, OC_VERIFY},
	[RPC_EncryptInit] = {OP_ENCRYPT, OC_INIT}, [RPC_Encrypt] = {OP_ENCRYPT, OC_FINAL},
	[RPC_EncryptUpdate] = {OP_ENCRYPT, OC_UPDATE}, [RPC_EncryptFinal] = {OP_ENCRYPT, OC_FINAL},
	[RPC_DecryptInit] = {OP_DECRYPT, OC_INIT}, [RPC_Decrypt] = {OP_DECRYPT, OC_FINAL},
	[RPC_DecryptUpdate] = {OP_DECRYPT, OC_UPDATE}, [RPC_DecryptFinal] = {OP_DECRYPT, OC_FINAL},
	[RPC_DigestInit] = {OP_DIGEST, OC_INIT}, [RPC_Digest] = {OP_DIGEST, OC_FINAL},
	[RPC_DigestUpdate] = {OP_DIGEST, OC_UPDATE}, [RPC_DigestKey] = {OP_DIGEST, OC_UPDATE},
	[RPC_DigestFinal] = {OP_DIGEST, OC_FINAL},
};
static const int init_of[OP_KINDS] = {
	[OP_SIGN] = RPC_SignInit, [OP_VERIFY] = RPC_VerifyInit, [OP_ENCRYPT] = RPC_EncryptInit,
	[OP_DECRYPT] = RPC_DecryptInit, [OP_DIGEST] = RPC_DigestInit,
};

static void
call_end (struct call *c)
{
	buf_wipe (&c->req);
	buf_wipe (&c->reply);
	if (c->m != NULL)
		leave ();
	c->m = NULL;
}

/* start_slot: a call about a slot; it connects if need be. */
static CK_RV
start_slot (struct call *c, int id, CK_SLOT_ID slot)
{
	struct slot *s;
	CK_ULONG daemon_id;
	CK_RV rv;

	memset (c, 0, sizeof *c);
	c->m = enter ();
	if (c->m == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (slot >= (CK_SLOT_ID) c->m->nslots) {
		call_end (c);
		return CKR_SLOT_ID_INVALID;
	}
	c->slot = slot;
	c->id = id;
	s = &c->m->slots[slot];
	pthread_mutex_lock (&s->lock);
	rv = connect_slot (c->m, s);
	c->conn = s->conn & 0xffffff;
	daemon_id = s->daemon_id;
	pthread_mutex_unlock (&s->lock);
	if (rv != CKR_OK) {
		call_end (c);
		return rv;
	}
	begin (&c->req, id);
	put_u64 (&c->req, daemon_id);
	return CKR_OK;
}

/* start: a call on a session. */
static CK_RV
start (struct call *c, int id, CK_SESSION_HANDLE h)
{
	memset (c, 0, sizeof *c);
	c->m = enter ();
	if (c->m == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	c->slot = slot_of (c->m, h);
	if (c->slot < 0) {
		call_end (c);
		return CKR_SESSION_HANDLE_INVALID;
	}
	c->conn = (h >> 32) & 0xffffff;
	c->id = id;
	c->h = h;
	begin (&c->req, id);
	put_u64 (&c->req, h & 0xffffffff);
	return CKR_OK;
}

/* object puts an object handle of the call's session; a handle of another
 * slot or connection is refused with bad. */
static CK_RV
object (struct call *c, CK_OBJECT_HANDLE h, CK_RV bad)
{
	if (slot_of (c->m, h) != c->slot || ((h >> 32) & 0xffffff) != c->conn ||
	    (h & 0xffffffff) == 0)
		return bad;
	put_u64 (&c->req, h & 0xffffffff);
	return CKR_OK;
}

/* call sends the request on the session's connection and checks the
 * reply's header. A connection that is not the one the session was
 * opened on answers CKR_SESSION_HANDLE_INVALID.
 *
 * A call of an operation whose C_*Init was deferred sends that C_*Init
 * first, in the same write: one round trip. If the daemon refuses the
 * C_*Init, its error is this call's (the daemon, which had no operation,
 * refused the call itself with CKR_OPERATION_NOT_INITIALIZED, doing
 * nothing), and no operation is active. */
static CK_RV
call (struct call *c)
{
	struct slot *s = &c->m->slots[c->slot];
	int kind = opcall[c->id].kind, cls = opcall[c->id].cls;
	struct sess *e = NULL;
	CK_RV rv;

	if (c->req.failed)
		return CKR_HOST_MEMORY;
	/* Refused here, nothing sent: done ends the operation (op_failed). */
	if (too_long (&c->req))
		return too_long_rv (c->id);
	pthread_mutex_lock (&s->lock);
	if (is_broken (s))
		close_broken (s);
	if (s->fd < 0 || (s->conn & 0xffffff) != c->conn) {
		pthread_mutex_unlock (&s->lock);
		return CKR_SESSION_HANDLE_INVALID;
	}
	c->sent = 1;
	if (cls != OC_NONE && cls != OC_INIT)
		e = sess_find (s, c->h);
	if (e != NULL && e->st[kind] == ST_PENDING && e->queried[kind] && c->id != RPC_Sign && c->id != RPC_Digest &&
	    c->id != RPC_Encrypt) {
		/* After C_Sign's (C_Digest's, C_Encrypt's) length query,
		 * anything but C_Sign (C_Digest, C_Encrypt) ends the operation
		 * with CKR_OPERATION_ACTIVE, as the daemon does. */
		buf_wipe (&e->pending[kind]);
		e->st[kind] = ST_NONE;
		c->deferred = 1;
		pthread_mutex_unlock (&s->lock);
		return CKR_OPERATION_ACTIVE;
	}
	/* Which operation the call goes to is known if it is active or its
	 * C_*Init goes with the call (not while a C_*Init of another thread
	 * is on its way, which the daemon may take before this call). */
	if (e != NULL && (e->st[kind] == ST_PENDING || e->st[kind] == ST_ACTIVE) && op_known (s, e, kind) != NULL) {
		c->learn = 1;
		c->fresh = e->st[kind] == ST_PENDING;
		c->kidx = e->kidx[kind];
		c->kgen = e->kgen[kind];
	}
	if (e != NULL && e->st[kind] == ST_PENDING) {
		struct buf ireply = {0}, init = e->pending[kind];
		struct buf *reqs[2] = { &init, &c->req };
		struct buf *replies[2] = { &ireply, &c->reply };
		struct rd r;
		int st = ST_UNKNOWN;

		memset (&e->pending[kind], 0, sizeof e->pending[kind]);
		/* Unknown until the replies come: a C_*Init of another thread
		 * meanwhile is sent at once, and the daemon orders them. */
		c->seq = set_st (s, e, kind, ST_UNKNOWN);
		/* The slot's lock is let go while the replies come: e is
		 * found again after. */
		rv = exchange_n (s, reqs, replies, 2, 0);
		buf_wipe (&init);
		if (rv == CKR_OK) {
			rv = check_reply (&ireply, init_of[kind], &r);
			if (rv == CKR_OK && (r.bad || r.n != 0))
				rv = CKR_DEVICE_ERROR;
			if (rv == CKR_OK) {
				st = ST_ACTIVE;
			} else {
				c->deferred = 1;
				if (!unsure (rv) && rv != CKR_OPERATION_ACTIVE)
					st = ST_NONE;
			}
		}
		buf_wipe (&ireply);
		if ((s->conn & 0xffffff) == c->conn && (e = sess_find (s, c->h)) != NULL &&
		    e->seq[kind] == c->seq)
			c->seq = set_st (s, e, kind, st);
	} else {
		if (e != NULL)
			c->seq = set_st (s, e, kind, ST_UNKNOWN);
		rv = exchange (s, &c->req, &c->reply);
	}
	/* What a call changes in what the module knows. */
	switch (c->id) {
	case RPC_CloseSession:
		sess_remove (s, c->h);
		known_clear (s); /* the last session's objects go with it */
		break;
	case RPC_CloseAllSessions:
		sess_forget_all (s);
		break;
	case RPC_Logout: case RPC_DestroyObject: case RPC_SetAttributeValue:
		known_clear (s);
		break;
	}
	pthread_mutex_unlock (&s->lock);
	explicit_bzero (c->req.p, c->req.cap);
	if (rv != CKR_OK)
		return rv;
	return check_reply (&c->reply, c->id, &c->r);
}

/* track records what a call of an operation left in the daemon, as
 * PKCS #11 has it: a call that fails ends the operation, and so does a
 * final call that succeeds, except a length query (or CKR_BUFFER_TOO_SMALL);
 * C_Verify and C_VerifyFinal always end it. */
static void
track (struct call *c, CK_RV rv)
{
	struct slot *s;
	struct sess *e;
	int kind = opcall[c->id].kind, cls = opcall[c->id].cls, st;

	if (!c->sent || c->deferred || cls == OC_NONE || cls == OC_INIT)
		return;
	if (unsure (rv))
		st = ST_UNKNOWN;
	else if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)
		st = ST_NONE;
	else if (cls == OC_VERIFY)
		st = ST_NONE;
	else if (cls == OC_UPDATE || rv == CKR_BUFFER_TOO_SMALL || c->sizeq)
		st = ST_ACTIVE;
	else
		st = ST_NONE;
	s = &c->m->slots[c->slot];
	pthread_mutex_lock (&s->lock);
	/* Unless a call of the same kind was sent since: its reply says. */
	if (c->seq != 0 && (s->conn & 0xffffff) == c->conn && (e = sess_find (s, c->h)) != NULL &&
	    e->seq[kind] == c->seq)
		set_st (s, e, kind, st);
	pthread_mutex_unlock (&s->lock);
}

static CK_RV op_failed (int id, CK_SESSION_HANDLE h, CK_RV rv);

/* done: the reply must have been read whole. A call of an operation that
 * fails without the daemon saying so (refused here, before it was sent,
 * or with an answer that leaves the operation unknown) ends it there too
 * (op_failed). */
static CK_RV
done (struct call *c, CK_RV rv)
{
	int id = c->id, local;
	CK_SESSION_HANDLE h = c->h;

	if (rv == CKR_OK && (c->r.bad || c->r.n != 0))
		rv = CKR_DEVICE_ERROR;
	track (c, rv);
	local = !c->sent || unsure (rv);
	call_end (c);
	return local ? op_failed (id, h, rv) : rv;
}

/* A reply's handle of this call's connection. */
static CK_RV
get_handle (struct call *c, CK_ULONG *out)
{
	uint64_t h = get_u64 (&c->r);
	if (c->r.bad || h == 0 || h > 0xffffffff)
		return CKR_DEVICE_ERROR;
	*out = handle_of (c->slot, c->conn, h);
	return CKR_OK;
}

/* get_space reads an "s" of exactly n bytes into out. */
static void
get_space (struct rd *r, unsigned char *out, size_t n)
{
	uint32_t len;
	int none;
	const unsigned char *v = get_array (r, &len, &none);
	if (v == NULL || len != n) {
		r->bad = 1;
		return;
	}
	memcpy (out, v, n);
}

static void
get_version (struct rd *r, CK_VERSION *v)
{
	v->major = get_u8 (r);
	v->minor = get_u8 (r);
}

/* get_out reads an "ay" reply into a caller's buffer, as PKCS #11 says:
 * the length when out is NULL, CKR_BUFFER_TOO_SMALL when it is short. */
static CK_RV
get_out (struct rd *r, CK_BYTE_PTR out, CK_ULONG_PTR len)
{
	uint32_t n;
	int none;
	const unsigned char *v;

	if (get_u8 (r) == 0) {
		n = get_u32 (r);
		if (r->bad)
			return CKR_DEVICE_ERROR;
		*len = n;
		return out == NULL ? CKR_OK : CKR_BUFFER_TOO_SMALL;
	}
	v = get_array (r, &n, &none);
	if (r->bad)
		return CKR_DEVICE_ERROR;
	if (out == NULL) {
		*len = n;
		return CKR_OK;
	}
	if (*len < n) {
		*len = n;
		return CKR_BUFFER_TOO_SMALL;
	}
	if (n > 0)
		memcpy (out, v, n);
	*len = n;
	return CKR_OK;
}

/* get_ulongs reads an "au" reply the same way. */
static CK_RV
get_ulongs (struct rd *r, CK_ULONG_PTR out, CK_ULONG_PTR count, int handles, struct call *c)
{
	uint32_t n, i;
	int present = get_u8 (r);

	n = get_u32 (r);
	if (r->bad)
		return CKR_DEVICE_ERROR;
	if (!present || out == NULL) {
		*count = n;
		return out == NULL ? CKR_OK : CKR_BUFFER_TOO_SMALL;
	}
	if (n > *count)
		return CKR_DEVICE_ERROR;
	for (i = 0; i < n; i++) {
		if (handles) {
			if (get_handle (c, &out[i]) != CKR_OK)
				return CKR_DEVICE_ERROR;
		} else {
			out[i] = get_u64 (r);
		}
	}
	*count = n;
	return r->bad ? CKR_DEVICE_ERROR : CKR_OK;
}

/* ---- attributes and mechanisms ---------------------------------------- */

enum { KIND_BYTES, KIND_BYTE, KIND_ULONG, KIND_ARRAY };

static int
value_kind (CK_ATTRIBUTE_TYPE t)
{
	switch (t) {
	case CKA_TOKEN: case CKA_PRIVATE: case CKA_TRUSTED: case CKA_SENSITIVE: case CKA_ENCRYPT:
	case CKA_DECRYPT: case CKA_WRAP: case CKA_UNWRAP: case CKA_SIGN: case CKA_SIGN_RECOVER:
	case CKA_VERIFY: case CKA_VERIFY_RECOVER: case CKA_DERIVE: case CKA_EXTRACTABLE: case CKA_LOCAL:
	case CKA_NEVER_EXTRACTABLE: case CKA_ALWAYS_SENSITIVE: case CKA_MODIFIABLE: case 0x171 /* CKA_COPYABLE */:
	case 0x300 /* CKA_SECONDARY_AUTH */: case CKA_ALWAYS_AUTHENTICATE: case CKA_WRAP_WITH_TRUSTED:
	case 0x301 /* CKA_RESET_ON_INIT */: case 0x302 /* CKA_HAS_RESET */: case 0x405 /* CKA_COLOR */:
		return KIND_BYTE;
	case CKA_CLASS: case CKA_CERTIFICATE_TYPE: case CKA_CERTIFICATE_CATEGORY:
	case CKA_JAVA_MIDP_SECURITY_DOMAIN: case CKA_KEY_TYPE: case CKA_MODULUS_BITS: case CKA_PRIME_BITS:
	case CKA_SUB_PRIME_BITS: case CKA_VALUE_BITS: case CKA_VALUE_LEN: case CKA_KEY_GEN_MECHANISM:
	case 0x201 /* CKA_AUTH_PIN_FLAGS */: case 0x400: case 0x401: case 0x402: case 0x403: case 0x404:
	case 0x406: case 0x500 /* CKA_MECHANISM_TYPE */:
		return KIND_ULONG;
	case CKA_WRAP_TEMPLATE: case CKA_UNWRAP_TEMPLATE: case CKA_DERIVE_TEMPLATE: case CKA_ALLOWED_MECHANISMS:
		return KIND_ARRAY;
	}
	return KIND_BYTES;
}

/* put_template writes an "aA": each attribute's type, whether it has a
 * value, its length and the value in the encoding of its kind. */
static CK_RV
put_template (struct buf *b, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	CK_ULONG i;

	if (t == NULL && n != 0)
		return CKR_ARGUMENTS_BAD;
	if (n > 256)
		return CKR_TEMPLATE_INCONSISTENT;
	put_u32 (b, n);
	for (i = 0; i < n; i++) {
		put_u32 (b, t[i].type);
		switch (value_kind (t[i].type)) {
		case KIND_ARRAY:
			/* Templates inside templates and mechanism lists are
			 * not offered by the daemon. */
			return CKR_ATTRIBUTE_TYPE_INVALID;
		case KIND_BYTE:
			if (t[i].pValue == NULL) {
				put_u8 (b, 0);
				break;
			}
			if (t[i].ulValueLen != 1)
				return CKR_ATTRIBUTE_VALUE_INVALID;
			put_u8 (b, 1);
			put_u32 (b, 1);
			put_u8 (b, *(CK_BYTE *) t[i].pValue);
			break;
		case KIND_ULONG:
			if (t[i].pValue == NULL) {
				put_u8 (b, 0);
				break;
			}
			if (t[i].ulValueLen != sizeof (CK_ULONG))
				return CKR_ATTRIBUTE_VALUE_INVALID;
			put_u8 (b, 1);
			put_u32 (b, sizeof (CK_ULONG));
			put_u64 (b, *(CK_ULONG *) t[i].pValue);
			break;
		default:
			if (t[i].pValue == NULL && t[i].ulValueLen != 0)
				return CKR_ARGUMENTS_BAD;
			put_u8 (b, 1);
			put_u32 (b, t[i].ulValueLen);
			put_array (b, t[i].pValue, t[i].ulValueLen);
		}
	}
	return CKR_OK;
}

struct rsa_aes_key_wrap_params {
	CK_ULONG ulAESKeyBits;
	CK_RSA_PKCS_OAEP_PARAMS *pOAEPParams;
};

static CK_RV
put_oaep (struct buf *b, const CK_RSA_PKCS_OAEP_PARAMS *p)
{
	if (p == NULL || (p->pSourceData == NULL && p->ulSourceDataLen != 0))
		return CKR_MECHANISM_PARAM_INVALID;
	put_u64 (b, p->hashAlg);
	put_u64 (b, p->mgf);
	put_u64 (b, p->source);
	put_array (b, p->pSourceData, p->ulSourceDataLen);
	return CKR_OK;
}

/* CK_HKDF_PARAMS (PKCS #11 3.0). */
struct hkdf_params {
	CK_BBOOL bExtract;
	CK_BBOOL bExpand;
	CK_MECHANISM_TYPE prfHashMechanism;
	CK_ULONG ulSaltType;
	CK_BYTE_PTR pSalt;
	CK_ULONG ulSaltLen;
	CK_OBJECT_HANDLE hSaltKey;
	CK_BYTE_PTR pInfo;
	CK_ULONG ulInfoLen;
};
#define CKM_HKDF_DERIVE_ 0x402aUL

struct eddsa_params {
	CK_BBOOL phFlag;
	CK_ULONG ulContextDataLen;
	CK_BYTE_PTR pContextData;
};

static CK_RV put_mechanism_param (struct buf *b, CK_MECHANISM_PTR m);

/* put_mechanism writes an "M": the type, then the parameter in the form
 * the daemon reads for it. A parameter that makes the request longer than
 * the daemon takes is CKR_MECHANISM_PARAM_INVALID. */
static CK_RV
put_mechanism (struct buf *b, CK_MECHANISM_PTR m)
{
	CK_RV rv = put_mechanism_param (b, m);
	if (rv == CKR_OK && too_long (b))
		rv = CKR_MECHANISM_PARAM_INVALID;
	return rv;
}

static CK_RV
put_mechanism_param (struct buf *b, CK_MECHANISM_PTR m)
{
	if (m == NULL)
		return CKR_ARGUMENTS_BAD;
	/* 0xffffffff is how a NULL_PTR mechanism is sent (end_op): a
	 * program's mechanism of that type is none the daemon offers. */
	if (m->mechanism >= 0xffffffff)
		return CKR_MECHANISM_INVALID;
	if (m->pParameter == NULL && m->ulParameterLen != 0)
		return CKR_MECHANISM_PARAM_INVALID;
	put_u32 (b, m->mechanism);
	switch (m->mechanism) {
	case CKM_RSA_PKCS_PSS: case CKM_SHA256_RSA_PKCS_PSS: case CKM_SHA384_RSA_PKCS_PSS:
	case CKM_SHA512_RSA_PKCS_PSS: {
		CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
		if (p == NULL || m->ulParameterLen != sizeof *p)
			return CKR_MECHANISM_PARAM_INVALID;
		put_u64 (b, p->hashAlg);
		put_u64 (b, p->mgf);
		put_u64 (b, p->sLen);
		return CKR_OK;
	}
	case CKM_RSA_PKCS_OAEP:
		if (m->ulParameterLen != sizeof (CK_RSA_PKCS_OAEP_PARAMS))
			return CKR_MECHANISM_PARAM_INVALID;
		return put_oaep (b, m->pParameter);
	case CKM_RSA_AES_KEY_WRAP: {
		struct rsa_aes_key_wrap_params *p = m->pParameter;
		if (p == NULL || m->ulParameterLen != sizeof *p)
			return CKR_MECHANISM_PARAM_INVALID;
		put_u64 (b, p->ulAESKeyBits);
		return put_oaep (b, p->pOAEPParams);
	}
	case CKM_AES_GCM: {
		CK_GCM_PARAMS *p = m->pParameter;
		if (p == NULL || m->ulParameterLen != sizeof *p ||
		    (p->pIv == NULL && p->ulIvLen != 0) || (p->pAAD == NULL && p->ulAADLen != 0))
			return CKR_MECHANISM_PARAM_INVALID;
		put_array (b, p->pIv, p->ulIvLen);
		put_u64 (b, p->ulIvBits);
		put_array (b, p->pAAD, p->ulAADLen);
		put_u64 (b, p->ulTagBits);
		return CKR_OK;
	}
	case CKM_HKDF_DERIVE_: {
		/* A salt key is not offered (the daemon refuses one); its
		 * handle is not sent. */
		struct hkdf_params *p = m->pParameter;
		if (p == NULL || m->ulParameterLen != sizeof *p || p->hSaltKey != 0 ||
		    (p->pSalt == NULL && p->ulSaltLen != 0) || (p->pInfo == NULL && p->ulInfoLen != 0))
			return CKR_MECHANISM_PARAM_INVALID;
		put_u8 (b, p->bExtract ? 1 : 0);
		put_u8 (b, p->bExpand ? 1 : 0);
		put_u64 (b, p->prfHashMechanism);
		put_u64 (b, p->ulSaltType);
		put_array (b, p->pSalt, p->ulSaltLen);
		put_u64 (b, 0);
		put_array (b, p->pInfo, p->ulInfoLen);
		return CKR_OK;
	}
	case CKM_ECDH1_DERIVE: {
		/* As p11-kit sends it: the KDF, the shared data, the peer's
		 * public data; the daemon checks each. */
		CK_ECDH1_DERIVE_PARAMS *p = m->pParameter;
		if (p == NULL || m->ulParameterLen != sizeof *p ||
		    (p->pSharedData == NULL && p->ulSharedDataLen != 0) ||
		    (p->pPublicData == NULL && p->ulPublicDataLen != 0))
			return CKR_MECHANISM_PARAM_INVALID;
		put_u64 (b, p->kdf);
		put_array (b, p->pSharedData, p->ulSharedDataLen);
		put_array (b, p->pPublicData, p->ulPublicDataLen);
		return CKR_OK;
	}
	case CKM_EDDSA: {
		/* Pure Ed25519 only: a parameter asking for it is the same as
		 * none; a pre-hash or a context is refused by the daemon. */
		struct eddsa_params *p = m->pParameter;
		if (p != NULL && m->ulParameterLen == sizeof *p && !p->phFlag && p->ulContextDataLen == 0) {
			put_array (b, NULL, 0);
			return CKR_OK;
		}
		if (p != NULL)
			return CKR_MECHANISM_PARAM_INVALID;
		put_array (b, NULL, 0);
		return CKR_OK;
	}
	}
	/* Every other parameter is bytes (an IV, a salt) or absent. */
	put_array (b, m->pParameter, m->ulParameterLen);
	return CKR_OK;
}

/* ---- the functions ---------------------------------------------------- */

static CK_FUNCTION_LIST function_list;

/* daemon_settings reads $KEYWARDEN_DAEMON_UID and $KEYWARDEN_PKCS11_TIMEOUT:
 * numbers, or an error (never a silent default). */
static int
daemon_settings (struct module *m)
{
	const char *p = secure_getenv ("KEYWARDEN_DAEMON_UID");
	unsigned long n;

	if (p != NULL && p[0] != '\0') {
		if (parse_uint (p, 0xffffffffUL, &n) != 0) {
			fprintf (stderr, "keywarden-pkcs11: $KEYWARDEN_DAEMON_UID is not a uid: give a number (id -u USER prints it)\n");
			return -1;
		}
		m->named = (uid_t) n;
	}
	m->timeout = DEFAULT_TIMEOUT;
	p = secure_getenv ("KEYWARDEN_PKCS11_TIMEOUT");
	if (p != NULL && p[0] != '\0') {
		if (parse_uint (p, 1000000, &n) != 0) {
			fprintf (stderr, "keywarden-pkcs11: $KEYWARDEN_PKCS11_TIMEOUT is not a number of seconds (0 to 1000000)\n");
			return -1;
		}
		m->timeout = (long) n;
	}
	return 0;
}

EXPORT CK_RV
C_Initialize (CK_VOID_PTR args)
{
	CK_C_INITIALIZE_ARGS *a = args;
	struct module *m;
	int i;

	if (a != NULL) {
		if (a->pReserved != NULL)
			return CKR_ARGUMENTS_BAD;
		/* The caller's own mutex functions without
		 * CKF_OS_LOCKING_OK: the module still uses the OS's. */
	}
	pthread_mutex_lock (&init_lock);
	if (mod != NULL && mod->pid == getpid ()) {
		pthread_mutex_unlock (&init_lock);
		return CKR_CRYPTOKI_ALREADY_INITIALIZED;
	}
	if (mod != NULL) {
		/* A child of a fork: the parent's connections are the
		 * parent's, and their descriptors were closed at the fork
		 * (after_fork_child). The numbers may be the child's own
		 * files by now: they are only forgotten here. */
		mod = NULL;
	}
	m = calloc (1, sizeof *m);
	if (m == NULL) {
		pthread_mutex_unlock (&init_lock);
		return CKR_HOST_MEMORY;
	}
	m->pid = getpid ();
	m->self = getuid ();
	if (daemon_settings (m) != 0) {
		free (m);
		pthread_mutex_unlock (&init_lock);
		return CKR_ARGUMENTS_BAD;
	}
	if (find_sockets (m) != 0) {
		free (m);
		pthread_mutex_unlock (&init_lock);
		fprintf (stderr, "keywarden-pkcs11: KEYWARDEN_PKCS11_SOCKET lists more than %d sockets or a path too long\n", MAX_SLOTS);
		return CKR_ARGUMENTS_BAD;
	}
	for (i = 0; i < m->nslots; i++) {
		pthread_mutex_init (&m->slots[i].lock, NULL);
		pthread_mutex_init (&m->slots[i].qlock, NULL);
		m->slots[i].fd = -1;
		known_clear (&m->slots[i]);
	}
	/* No thread of this process is in the module now: one polling in
	 * the parent of a fork that ran no handler (_Fork) is not this
	 * process's. */
	__atomic_store_n (&polling, 0, __ATOMIC_RELEASE);
	__atomic_store_n (&mod_pid, m->pid, __ATOMIC_SEQ_CST);
	if (fork_mark != NULL)
		__atomic_store_n (fork_mark, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n (&mod, m, __ATOMIC_RELEASE);
	pthread_mutex_unlock (&init_lock);
	return CKR_OK;
}

EXPORT CK_RV
C_Finalize (CK_VOID_PTR reserved)
{
	struct module *m;
	int i;

	if (reserved != NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock (&init_lock);
	m = current ();
	if (m == NULL) {
		pthread_mutex_unlock (&init_lock);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	__atomic_store_n (&mod, NULL, __ATOMIC_SEQ_CST);
	__atomic_store_n (&finalizing, 1, __ATOMIC_SEQ_CST);
	/* Threads still inside calls: what they wait for fails (a reading
	 * thread wakes from the connection's shutdown), no connection is
	 * opened again, and they are waited for before anything is freed. */
	for (i = 0; i < m->nslots; i++) {
		struct slot *s = &m->slots[i];
		pthread_mutex_lock (&s->lock);
		s->gone = 1;
		pthread_mutex_lock (&s->qlock);
		if (s->fd >= 0)
			fail_all (s);
		pthread_mutex_unlock (&s->qlock);
		pthread_mutex_unlock (&s->lock);
	}
	pthread_mutex_lock (&users_lock);
	while (__atomic_load_n (&users, __ATOMIC_SEQ_CST) != 0)
		pthread_cond_wait (&users_gone, &users_lock);
	__atomic_store_n (&finalizing, 0, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock (&users_lock);
	/* Closing a connection ends its sessions in the daemon. */
	for (i = 0; i < m->nslots; i++) {
		pthread_mutex_lock (&m->slots[i].lock);
		disconnect (&m->slots[i]);
		sess_forget_all (&m->slots[i]);
		pthread_mutex_unlock (&m->slots[i].lock);
		pthread_mutex_destroy (&m->slots[i].lock);
		pthread_mutex_destroy (&m->slots[i].qlock);
	}
	free (m);
	pthread_mutex_unlock (&init_lock);
	return CKR_OK;
}

static void
pad (CK_UTF8CHAR *dst, const char *s, size_t n)
{
	size_t l = strlen (s);
	memset (dst, ' ', n);
	memcpy (dst, s, l < n ? l : n);
}

EXPORT CK_RV
C_GetInfo (CK_INFO_PTR info)
{
	if (current () == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	memset (info, 0, sizeof *info);
	info->cryptokiVersion.major = 2;
	info->cryptokiVersion.minor = 40;
	pad (info->manufacturerID, "keywarden", sizeof info->manufacturerID);
	pad (info->libraryDescription, "keywarden PKCS #11 module", sizeof info->libraryDescription);
	info->libraryVersion.major = 2;
	info->libraryVersion.minor = 0;
	return CKR_OK;
}

EXPORT CK_RV
C_GetFunctionList (CK_FUNCTION_LIST_PTR_PTR list)
{
	if (list == NULL)
		return CKR_ARGUMENTS_BAD;
	*list = &function_list;
	return CKR_OK;
}

/* present says whether the slot's daemon answers (connecting if need be). */
static int
present (struct module *m, int i)
{
	struct slot *s = &m->slots[i];
	CK_RV rv;
	pthread_mutex_lock (&s->lock);
	rv = connect_slot (m, s);
	pthread_mutex_unlock (&s->lock);
	return rv == CKR_OK;
}

static CK_RV
slot_list (struct module *m, CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	CK_SLOT_ID ids[MAX_SLOTS];
	CK_ULONG n = 0, i;

	if (m == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (count == NULL)
		return CKR_ARGUMENTS_BAD;
	for (i = 0; i < (CK_ULONG) m->nslots; i++)
		if (!token_present || present (m, i))
			ids[n++] = i;
	if (list == NULL) {
		*count = n;
		return CKR_OK;
	}
	if (*count < n) {
		*count = n;
		return CKR_BUFFER_TOO_SMALL;
	}
	memcpy (list, ids, n * sizeof ids[0]);
	*count = n;
	return CKR_OK;
}

EXPORT CK_RV
C_GetSlotList (CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	struct module *m = enter ();
	CK_RV rv = slot_list (m, token_present, list, count);
	if (m != NULL)
		leave ();
	return rv;
}

static CK_RV
slot_info (struct module *m, CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	char desc[80];

	if (m == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (slot >= (CK_SLOT_ID) m->nslots)
		return CKR_SLOT_ID_INVALID;
	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	memset (info, 0, sizeof *info);
	snprintf (desc, sizeof desc, "keywarden daemon %lu", (unsigned long) slot);
	pad (info->slotDescription, desc, sizeof info->slotDescription);
	pad (info->manufacturerID, "keywarden", sizeof info->manufacturerID);
	info->flags = CKF_REMOVABLE_DEVICE | (present (m, slot) ? CKF_TOKEN_PRESENT : 0);
	info->hardwareVersion.major = info->firmwareVersion.major = 1;
	return CKR_OK;
}

EXPORT CK_RV
C_GetSlotInfo (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	struct module *m = enter ();
	CK_RV rv = slot_info (m, slot, info);
	if (m != NULL)
		leave ();
	return rv;
}

EXPORT CK_RV
C_GetTokenInfo (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	struct call c;
	CK_RV rv;

	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start_slot (&c, RPC_GetTokenInfo, slot);
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK) {
		struct rd *r = &c.r;
		get_space (r, info->label, 32);
		get_space (r, info->manufacturerID, 32);
		get_space (r, info->model, 16);
		get_space (r, info->serialNumber, 16);
		info->flags = get_u64 (r);
		info->ulMaxSessionCount = get_u64 (r);
		info->ulSessionCount = get_u64 (r);
		info->ulMaxRwSessionCount = get_u64 (r);
		info->ulRwSessionCount = get_u64 (r);
		info->ulMaxPinLen = get_u64 (r);
		info->ulMinPinLen = get_u64 (r);
		info->ulTotalPublicMemory = get_u64 (r);
		info->ulFreePublicMemory = get_u64 (r);
		info->ulTotalPrivateMemory = get_u64 (r);
		info->ulFreePrivateMemory = get_u64 (r);
		get_version (r, &info->hardwareVersion);
		get_version (r, &info->firmwareVersion);
		get_space (r, info->utcTime, 16);
	}
	return done (&c, rv);
}

EXPORT CK_RV
C_GetMechanismList (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
	struct call c;
	CK_RV rv;

	if (count == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start_slot (&c, RPC_GetMechanismList, slot);
	if (rv == CKR_OK) {
		put_u32 (&c.req, list ? *count : 0);
		rv = call (&c);
	}
	if (rv == CKR_OK)
		rv = get_ulongs (&c.r, list, count, 0, &c);
	return done (&c, rv);
}

EXPORT CK_RV
C_GetMechanismInfo (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
	struct call c;
	CK_RV rv;

	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start_slot (&c, RPC_GetMechanismInfo, slot);
	if (rv == CKR_OK) {
		put_u64 (&c.req, type);
		rv = call (&c);
	}
	if (rv == CKR_OK) {
		info->ulMinKeySize = get_u64 (&c.r);
		info->ulMaxKeySize = get_u64 (&c.r);
		info->flags = get_u64 (&c.r);
	}
	return done (&c, rv);
}

EXPORT CK_RV
C_OpenSession (CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR h)
{
	struct call c;
	CK_RV rv;

	(void) app;
	(void) notify;
	if (h == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start_slot (&c, RPC_OpenSession, slot);
	if (rv == CKR_OK) {
		put_u64 (&c.req, flags);
		rv = call (&c);
	}
	if (rv == CKR_OK)
		rv = get_handle (&c, h);
	if (rv == CKR_OK && c.r.n == 0 && !c.r.bad) {
		struct slot *s = &c.m->slots[c.slot];
		pthread_mutex_lock (&s->lock);
		if ((s->conn & 0xffffff) == c.conn)
			sess_add (s, *h);
		pthread_mutex_unlock (&s->lock);
	}
	return done (&c, rv);
}

/* simple: a call on a session with nothing more (or one ulong) and an
 * empty reply. */
static CK_RV
simple (int id, CK_SESSION_HANDLE h)
{
	struct call c;
	CK_RV rv = start (&c, id, h);
	if (rv == CKR_OK)
		rv = call (&c);
	return done (&c, rv);
}

EXPORT CK_RV C_CloseSession (CK_SESSION_HANDLE h) { return simple (RPC_CloseSession, h); }

EXPORT CK_RV
C_CloseAllSessions (CK_SLOT_ID slot)
{
	struct call c;
	CK_RV rv = start_slot (&c, RPC_CloseAllSessions, slot);
	if (rv == CKR_TOKEN_NOT_PRESENT)
		return CKR_OK; /* a daemon that is not there has no sessions */
	if (rv == CKR_OK)
		rv = call (&c);
	return done (&c, rv);
}

EXPORT CK_RV
C_GetSessionInfo (CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info)
{
	struct call c;
	CK_RV rv;

	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_GetSessionInfo, h);
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK) {
		get_u64 (&c.r); /* the daemon's slot id */
		info->slotID = c.slot;
		info->state = get_u64 (&c.r);
		info->flags = get_u64 (&c.r);
		info->ulDeviceError = get_u64 (&c.r);
	}
	return done (&c, rv);
}

EXPORT CK_RV
C_Login (CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
	struct call c;
	CK_RV rv;

	if (pin == NULL && len != 0)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_Login, h);
	if (rv == CKR_OK) {
		put_u64 (&c.req, user);
		put_bytes (&c.req, pin, len);
		rv = call (&c);
	}
	return done (&c, rv);
}

EXPORT CK_RV C_Logout (CK_SESSION_HANDLE h) { return simple (RPC_Logout, h); }

/* with_template: a call that sends a template and answers a handle. */
EXPORT CK_RV
C_CreateObject (CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR obj)
{
	struct call c;
	CK_RV rv;

	if (obj == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_CreateObject, h);
	if (rv == CKR_OK)
		rv = put_template (&c.req, t, n);
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK)
		rv = get_handle (&c, obj);
	return done (&c, rv);
}

EXPORT CK_RV
C_CopyObject (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR obj)
{
	struct call c;
	CK_RV rv;

	if (obj == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_CopyObject, h);
	if (rv == CKR_OK)
		rv = object (&c, o, CKR_OBJECT_HANDLE_INVALID);
	if (rv == CKR_OK)
		rv = put_template (&c.req, t, n);
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK)
		rv = get_handle (&c, obj);
	return done (&c, rv);
}

/* on_object: a call on a session and an object, with an empty reply. */
static CK_RV
on_object (int id, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_RV bad)
{
	struct call c;
	CK_RV rv = start (&c, id, h);
	if (rv == CKR_OK)
		rv = object (&c, o, bad);
	if (rv == CKR_OK)
		rv = call (&c);
	return done (&c, rv);
}

EXPORT CK_RV
C_DestroyObject (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o)
{
	return on_object (RPC_DestroyObject, h, o, CKR_OBJECT_HANDLE_INVALID);
}

EXPORT CK_RV
C_GetObjectSize (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ULONG_PTR size)
{
	(void) h;
	(void) o;
	(void) size;
	return CKR_FUNCTION_NOT_SUPPORTED;
}

EXPORT CK_RV
C_GetAttributeValue (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	struct call c;
	CK_RV rv, result = CKR_OK;
	CK_ULONG i;

	if (t == NULL && n != 0)
		return CKR_ARGUMENTS_BAD;
	if (n > 256)
		return CKR_TEMPLATE_INCONSISTENT;
	rv = start (&c, RPC_GetAttributeValue, h);
	if (rv == CKR_OK)
		rv = object (&c, o, CKR_OBJECT_HANDLE_INVALID);
	if (rv != CKR_OK)
		return done (&c, rv);
	put_u32 (&c.req, n);
	for (i = 0; i < n; i++) {
		put_u32 (&c.req, t[i].type);
		put_u32 (&c.req, t[i].pValue ? t[i].ulValueLen : 0);
	}
	rv = call (&c);
	if (rv != CKR_OK)
		return done (&c, rv);
	if (get_u32 (&c.r) != n)
		return done (&c, CKR_DEVICE_ERROR);
	for (i = 0; i < n && !c.r.bad; i++) {
		uint32_t len, alen;
		uint64_t u;
		unsigned char y;
		const unsigned char *v;
		int none, kind = value_kind (t[i].type);

		if (get_u32 (&c.r) != (uint32_t) t[i].type) {
			c.r.bad = 1;
			break;
		}
		if (get_u8 (&c.r) == 0) {
			t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			continue;
		}
		len = get_u32 (&c.r);
		switch (kind) {
		case KIND_BYTE:
			y = get_u8 (&c.r);
			v = &y;
			alen = 1;
			break;
		case KIND_ULONG:
			u = get_u64 (&c.r);
			v = (const unsigned char *) &u;
			alen = sizeof u;
			break;
		case KIND_ARRAY:
			if (get_u32 (&c.r) != 0)
				c.r.bad = 1;
			v = NULL;
			alen = 0;
			break;
		default:
			v = get_array (&c.r, &alen, &none);
		}
		if (c.r.bad)
			break;
		if (t[i].pValue == NULL) {
			t[i].ulValueLen = len;
			continue;
		}
		if (alen != len || (v == NULL && alen != 0)) {
			c.r.bad = 1;
			break;
		}
		if (t[i].ulValueLen < alen) {
			t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			result = CKR_BUFFER_TOO_SMALL;
			continue;
		}
		if (alen > 0)
			memcpy (t[i].pValue, v, alen);
		t[i].ulValueLen = alen;
	}
	rv = get_u64 (&c.r);
	if (rv == CKR_OK)
		rv = result;
	return done (&c, rv);
}

EXPORT CK_RV
C_SetAttributeValue (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	struct call c;
	CK_RV rv = start (&c, RPC_SetAttributeValue, h);
	if (rv == CKR_OK)
		rv = object (&c, o, CKR_OBJECT_HANDLE_INVALID);
	if (rv == CKR_OK)
		rv = put_template (&c.req, t, n);
	if (rv == CKR_OK)
		rv = call (&c);
	return done (&c, rv);
}

EXPORT CK_RV
C_FindObjectsInit (CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	struct call c;
	CK_RV rv = start (&c, RPC_FindObjectsInit, h);
	if (rv == CKR_OK)
		rv = put_template (&c.req, t, n);
	if (rv == CKR_OK)
		rv = call (&c);
	return done (&c, rv);
}

EXPORT CK_RV
C_FindObjects (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR objs, CK_ULONG max, CK_ULONG_PTR count)
{
	struct call c;
	CK_RV rv;

	if (objs == NULL || count == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_FindObjects, h);
	if (rv == CKR_OK) {
		put_u32 (&c.req, max > 0xffff ? 0xffff : max);
		rv = call (&c);
	}
	if (rv == CKR_OK) {
		*count = max;
		rv = get_ulongs (&c.r, objs, count, 1, &c);
	}
	return done (&c, rv);
}

EXPORT CK_RV C_FindObjectsFinal (CK_SESSION_HANDLE h) { return simple (RPC_FindObjectsFinal, h); }

static CK_RV end_op (int id, CK_SESSION_HANDLE h, int with_key);

/* init: an operation's C_*Init with a mechanism and a key (or none for a
 * digest).
 *
 * A C_*Init the daemon has accepted before on this connection, with the
 * same kind, key and mechanism (its parameter included), is not sent on
 * its own: it is kept and sent with the operation's next call, in the
 * same write (call), which saves a round trip per operation. The daemon's
 * checks of a C_*Init depend on nothing else but the key still being
 * there for the caller, so a deferred one fails only if the key was
 * destroyed or the session logged out meanwhile, or the daemon's key was
 * deleted; that error (CKR_KEY_HANDLE_INVALID) is then returned by the
 * next call of the operation, and no operation is active. The module
 * forgets what it was accepted at C_DestroyObject, C_SetAttributeValue,
 * C_Logout, C_CloseSession and C_CloseAllSessions. Every other error of
 * a C_*Init (a mechanism or parameter not offered, a key of another type,
 * CKR_OPERATION_ACTIVE) is returned by the C_*Init itself.
 *
 * A C_*Init with a NULL_PTR mechanism ends the operation (end_op). */
static CK_RV
init (int id, CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key, int with_key)
{
	struct call c;
	struct slot *s;
	struct sess *e;
	int kind = opcall[id].kind, prev = ST_UNKNOWN, ki;
	size_t moff = 0, mlen = 0;
	CK_RV rv;

	if (m == NULL)
		return end_op (id, h, with_key);
	rv = start (&c, id, h);

	if (rv == CKR_OK) {
		moff = c.req.len;
		rv = put_mechanism (&c.req, m);
		mlen = c.req.len - moff;
	}
	if (rv == CKR_OK && with_key)
		rv = object (&c, key, CKR_KEY_HANDLE_INVALID);
	if (rv == CKR_OK && c.req.failed)
		rv = CKR_HOST_MEMORY;
	if (rv == CKR_OK && too_long (&c.req))
		rv = CKR_MECHANISM_PARAM_INVALID;
	if (rv != CKR_OK)
		return done (&c, rv);
	if (!with_key)
		key = 0;
	s = &c.m->slots[c.slot];
	pthread_mutex_lock (&s->lock);
	if (is_broken (s))
		close_broken (s);
	if (s->fd < 0 || (s->conn & 0xffffff) != c.conn) {
		pthread_mutex_unlock (&s->lock);
		return done (&c, CKR_SESSION_HANDLE_INVALID);
	}
	e = sess_find (s, h);
	if (e != NULL && (e->st[kind] == ST_PENDING || e->st[kind] == ST_ACTIVE)) {
		pthread_mutex_unlock (&s->lock);
		return done (&c, CKR_OPERATION_ACTIVE);
	}
	if (e != NULL && e->st[kind] == ST_NONE && (ki = known_find (s, key, kind, c.req.p + moff, mlen)) >= 0) {
		e->pending[kind] = c.req;
		e->mech[kind] = m->mechanism;
		e->queried[kind] = 0;
		set_known (s, e, kind, ki);
		memset (&c.req, 0, sizeof c.req);
		set_st (s, e, kind, ST_PENDING);
		pthread_mutex_unlock (&s->lock);
		return done (&c, CKR_OK);
	}
	/* Unknown until the reply comes: a C_*Init of another thread on the
	 * session meanwhile is sent at once (not deferred, which would take
	 * this one's result for its own), and the daemon orders them. */
	if (e != NULL) {
		prev = e->st[kind];
		c.seq = set_st (s, e, kind, ST_UNKNOWN);
	}
	rv = exchange (s, &c.req, &c.reply);
	if (rv == CKR_OK)
		rv = check_reply (&c.reply, id, &c.r);
	if (rv == CKR_OK && (c.r.bad || c.r.n != 0))
		rv = CKR_DEVICE_ERROR;
	/* The slot's lock was let go while the reply came. */
	e = (s->conn & 0xffffff) == c.conn ? sess_find (s, h) : NULL;
	ki = rv == CKR_OK ? known_add (s, key, kind, m->mechanism, c.req.p + moff, mlen) : -1;
	/* Unless a call of the same kind was sent since: its reply says. */
	if (e != NULL && c.seq != 0 && e->seq[kind] == c.seq) {
		if (rv == CKR_OK || rv == CKR_OPERATION_ACTIVE)
			set_st (s, e, kind, ST_ACTIVE);
		else if (unsure (rv))
			set_st (s, e, kind, ST_UNKNOWN);
		else
			set_st (s, e, kind, prev);
		/* CKR_OPERATION_ACTIVE: the operation is another call's. */
		set_known (s, e, kind, rv == CKR_OK ? ki : -1);
	}
	pthread_mutex_unlock (&s->lock);
	return done (&c, rv);
}

/* MECH_NONE is how the module sends a NULL_PTR mechanism, which the
 * daemon takes for it: the type 0xffffffff, no parameter. */
#define MECH_NONE 0xffffffffu

/* end_op is a C_*Init with a NULL_PTR mechanism (PKCS #11 3.0): it ends
 * the session's operation of that kind, if there is one, and starts
 * none. A deferred C_*Init is dropped, nothing sent; an operation the
 * daemon has, or may have, is ended there by sending the C_*Init with
 * MECH_NONE (and no key). */
static CK_RV
end_op (int id, CK_SESSION_HANDLE h, int with_key)
{
	struct call c;
	struct slot *s;
	struct sess *e;
	int kind = opcall[id].kind;
	CK_RV rv = start (&c, id, h);

	if (rv != CKR_OK)
		return done (&c, rv);
	put_u32 (&c.req, MECH_NONE);
	put_u32 (&c.req, 0xffffffff);
	if (with_key)
		put_u64 (&c.req, 0);
	if (c.req.failed)
		return done (&c, CKR_HOST_MEMORY);
	s = &c.m->slots[c.slot];
	pthread_mutex_lock (&s->lock);
	if (is_broken (s))
		close_broken (s);
	if (s->fd < 0 || (s->conn & 0xffffff) != c.conn) {
		pthread_mutex_unlock (&s->lock);
		return done (&c, CKR_SESSION_HANDLE_INVALID);
	}
	e = sess_find (s, h);
	if (e != NULL && (e->st[kind] == ST_PENDING || e->st[kind] == ST_NONE)) {
		buf_wipe (&e->pending[kind]);
		set_st (s, e, kind, ST_NONE);
		pthread_mutex_unlock (&s->lock);
		return done (&c, CKR_OK);
	}
	if (e != NULL)
		c.seq = set_st (s, e, kind, ST_UNKNOWN);
	rv = exchange (s, &c.req, &c.reply);
	if (rv == CKR_OK)
		rv = check_reply (&c.reply, id, &c.r);
	if (rv == CKR_OK && (c.r.bad || c.r.n != 0))
		rv = CKR_DEVICE_ERROR;
	/* The slot's lock was let go while the reply came. */
	e = (s->conn & 0xffffff) == c.conn ? sess_find (s, h) : NULL;
	if (e != NULL && c.seq != 0 && e->seq[kind] == c.seq)
		set_st (s, e, kind, rv == CKR_OK ? ST_NONE : ST_UNKNOWN);
	pthread_mutex_unlock (&s->lock);
	return done (&c, rv);
}

/* op_failed ends the operation of call id's kind on session h when the
 * call fails and the daemon did not end it (PKCS #11 v2.40, 5.2: a call
 * of an operation that fails ends it, except CKR_BUFFER_TOO_SMALL): a
 * call refused here, before it was sent (its arguments, a request longer
 * than the daemon takes), or one whose answer leaves the daemon's state
 * unknown. Returns rv. */
static CK_RV
op_failed (int id, CK_SESSION_HANDLE h, CK_RV rv)
{
	int cls = id > 0 && id < RPC_MAX ? opcall[id].cls : OC_NONE;

	if (cls == OC_NONE || cls == OC_INIT)
		return rv;
	switch (rv) {
	case CKR_OK: case CKR_BUFFER_TOO_SMALL:
	/* No session, or no connection, to end an operation on. */
	case CKR_SESSION_HANDLE_INVALID: case CKR_SESSION_CLOSED: case CKR_CRYPTOKI_NOT_INITIALIZED:
	case CKR_DEVICE_REMOVED: case CKR_TOKEN_NOT_PRESENT:
		return rv;
	}
	end_op (init_of[opcall[id].kind], h, opcall[id].kind != OP_DIGEST);
	return rv;
}

/* fixed_length is the length of every result of a mechanism, where the
 * mechanism alone says it (and the daemon accepted it with the key): 0
 * where it does not (ECDSA and RSA: the key's size; encryption: the
 * data's). */
static CK_ULONG
fixed_length (CK_MECHANISM_TYPE m)
{
	switch (m) {
	case CKM_EDDSA: case CKM_SHA512_HMAC: case CKM_SHA512: case 0x2d0 /* CKM_SHA3_512 */:
		return 64;
	case CKM_SHA384_HMAC: case CKM_SHA384:
		return 48;
	case CKM_SHA256_HMAC: case CKM_SHA256: case 0x2b0 /* CKM_SHA3_256 */:
		return 32;
	}
	return 0;
}

/* MAX_LOCAL_DATA: data longer than one request of the daemon's (which
 * it streams) always takes the daemon's answer. */
#define MAX_LOCAL_DATA (60u << 10)

/* learn_length keeps the length n of a result (or the daemon's answer to
 * a length query) of c's operation, sent on data of inlen bytes, in its
 * accepted initialization, where all its results have one length for the
 * key and mechanism: a signature (ECDSA's is twice the curve's order,
 * RSA's the modulus, whatever the data), an RSA-OAEP encryption (the
 * modulus), or, as the data's length plus a constant, an AES-GCM
 * encryption (keywarden's format: a header with the key's version, the
 * nonce, the ciphertext, the tag). */
static void
learn_length (struct call *c, CK_ULONG inlen, CK_ULONG n)
{
	struct slot *s = &c->m->slots[c->slot];
	int kind = opcall[c->id].kind;
	struct known *k;

	if (!c->learn || (c->id != RPC_Sign && c->id != RPC_Encrypt) || inlen > MAX_LOCAL_DATA)
		return;
	pthread_mutex_lock (&s->lock);
	k = &s->known[c->kidx];
	if ((s->conn & 0xffffff) == c->conn && k->kind == kind && k->gen == c->kgen) {
		if (kind == OP_SIGN || k->type == CKM_RSA_PKCS_OAEP)
			k->len = n;
		else if (k->type == CKM_AES_GCM && n > inlen && c->fresh) {
			/* Computed on this data, not kept from a length query on
			 * other data (which PKCS #11 does not allow). */
			k->extra = n - inlen;
			k->has_extra = 1;
		}
	}
	pthread_mutex_unlock (&s->lock);
}

/* local_length answers a length query (or a buffer too small) of C_Sign,
 * C_Digest or C_Encrypt in the module, without a round trip, when the
 * operation's C_*Init is deferred and the length is known: from the
 * mechanism (fixed_length), or from an earlier result of the same key and
 * mechanism on the connection (learn_length); PKCS #11 lets a length
 * query answer from the mechanism and the key. The operation stays, its
 * C_*Init still deferred. Data longer than one request of the daemon's
 * takes the daemon's answer. 1 if answered, with *rv. c is started. */
static int
local_length (struct call *c, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen, CK_RV *rv)
{
	struct slot *s = &c->m->slots[c->slot];
	struct sess *e;
	struct known *k;
	int kind = opcall[c->id].kind, answered = 0;
	CK_ULONG n = 0;

	if ((c->id != RPC_Sign && c->id != RPC_Digest && c->id != RPC_Encrypt) || inlen > MAX_LOCAL_DATA)
		return 0;
	pthread_mutex_lock (&s->lock);
	if (s->fd >= 0 && !is_broken (s) && (s->conn & 0xffffff) == c->conn &&
	    (e = sess_find (s, c->h)) != NULL && e->st[kind] == ST_PENDING) {
		if (c->id != RPC_Encrypt)
			n = fixed_length (e->mech[kind]);
		if (n == 0 && (k = op_known (s, e, kind)) != NULL)
			n = k->has_extra ? inlen + k->extra : k->len;
		if (n != 0 && (out == NULL || *outlen < n)) {
			*rv = out == NULL ? CKR_OK : CKR_BUFFER_TOO_SMALL;
			*outlen = n;
			e->queried[kind] = 1;
			answered = 1;
		}
	}
	pthread_mutex_unlock (&s->lock);
	return answered;
}

/* in_out: data in, a result out ("uayfy" / "ay"). */
static CK_RV
in_out (int id, CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	struct call c;
	CK_RV rv;

	if ((in == NULL && inlen != 0) || outlen == NULL)
		return op_failed (id, h, CKR_ARGUMENTS_BAD);
	rv = start (&c, id, h);
	if (rv == CKR_OK && local_length (&c, inlen, out, outlen, &rv))
		return done (&c, rv);
	c.sizeq = out == NULL;
	if (rv == CKR_OK) {
		put_bytes (&c.req, in, inlen);
		put_u32 (&c.req, out ? (*outlen > 0xffffffff ? 0xffffffff : *outlen) : 0);
		rv = call (&c);
	}
	if (rv == CKR_OK)
		rv = get_out (&c.r, out, outlen);
	if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL)
		learn_length (&c, inlen, *outlen);
	return done (&c, rv);
}

/* in_only: data in, nothing out ("uay"). */
static CK_RV
in_only (int id, CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG inlen)
{
	struct call c;
	CK_RV rv;

	if (in == NULL && inlen != 0)
		return op_failed (id, h, CKR_ARGUMENTS_BAD);
	rv = start (&c, id, h);
	if (rv == CKR_OK) {
		put_bytes (&c.req, in, inlen);
		rv = call (&c);
	}
	return done (&c, rv);
}

/* out_only: a result out ("ufy" / "ay"). */
static CK_RV
out_only (int id, CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	struct call c;
	CK_RV rv;

	if (outlen == NULL)
		return op_failed (id, h, CKR_ARGUMENTS_BAD);
	rv = start (&c, id, h);
	c.sizeq = out == NULL;
	if (rv == CKR_OK) {
		put_u32 (&c.req, out ? (*outlen > 0xffffffff ? 0xffffffff : *outlen) : 0);
		rv = call (&c);
	}
	if (rv == CKR_OK)
		rv = get_out (&c.r, out, outlen);
	return done (&c, rv);
}

EXPORT CK_RV C_EncryptInit (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return init (RPC_EncryptInit, h, m, k, 1); }
EXPORT CK_RV C_Encrypt (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return in_out (RPC_Encrypt, h, in, n, out, outn); }
EXPORT CK_RV C_EncryptUpdate (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return in_out (RPC_EncryptUpdate, h, in, n, out, outn); }
EXPORT CK_RV C_EncryptFinal (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return out_only (RPC_EncryptFinal, h, out, outn); }
EXPORT CK_RV C_DecryptInit (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return init (RPC_DecryptInit, h, m, k, 1); }
EXPORT CK_RV C_Decrypt (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return in_out (RPC_Decrypt, h, in, n, out, outn); }
EXPORT CK_RV C_DecryptUpdate (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return in_out (RPC_DecryptUpdate, h, in, n, out, outn); }
EXPORT CK_RV C_DecryptFinal (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return out_only (RPC_DecryptFinal, h, out, outn); }
EXPORT CK_RV C_DigestInit (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m) { return init (RPC_DigestInit, h, m, 0, 0); }
EXPORT CK_RV C_Digest (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return in_out (RPC_Digest, h, in, n, out, outn); }
EXPORT CK_RV C_DigestUpdate (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n) { return in_only (RPC_DigestUpdate, h, in, n); }
EXPORT CK_RV C_DigestKey (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k) { return on_object (RPC_DigestKey, h, k, CKR_KEY_HANDLE_INVALID); }
EXPORT CK_RV C_DigestFinal (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return out_only (RPC_DigestFinal, h, out, outn); }
EXPORT CK_RV C_SignInit (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return init (RPC_SignInit, h, m, k, 1); }
EXPORT CK_RV C_Sign (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return in_out (RPC_Sign, h, in, n, out, outn); }
EXPORT CK_RV C_SignUpdate (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n) { return in_only (RPC_SignUpdate, h, in, n); }
EXPORT CK_RV C_SignFinal (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR outn) { return out_only (RPC_SignFinal, h, out, outn); }
EXPORT CK_RV C_VerifyInit (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return init (RPC_VerifyInit, h, m, k, 1); }
EXPORT CK_RV C_VerifyUpdate (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n) { return in_only (RPC_VerifyUpdate, h, in, n); }
EXPORT CK_RV C_VerifyFinal (CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG n) { return in_only (RPC_VerifyFinal, h, sig, n); }

EXPORT CK_RV
C_Verify (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR sig, CK_ULONG sn)
{
	struct call c;
	CK_RV rv;

	if ((in == NULL && n != 0) || (sig == NULL && sn != 0))
		return op_failed (RPC_Verify, h, CKR_ARGUMENTS_BAD);
	rv = start (&c, RPC_Verify, h);
	if (rv == CKR_OK) {
		put_bytes (&c.req, in, n);
		put_bytes (&c.req, sig, sn);
		rv = call (&c);
	}
	return done (&c, rv);
}

EXPORT CK_RV
C_GenerateKey (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR key)
{
	struct call c;
	CK_RV rv;

	if (key == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_GenerateKey, h);
	if (rv == CKR_OK)
		rv = put_mechanism (&c.req, m);
	if (rv == CKR_OK)
		rv = put_template (&c.req, t, n);
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK)
		rv = get_handle (&c, key);
	return done (&c, rv);
}

EXPORT CK_RV
C_GenerateKeyPair (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pubt, CK_ULONG pubn,
                   CK_ATTRIBUTE_PTR privt, CK_ULONG privn, CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv)
{
	struct call c;
	CK_RV rv;

	if (pub == NULL || priv == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_GenerateKeyPair, h);
	if (rv == CKR_OK)
		rv = put_mechanism (&c.req, m);
	if (rv == CKR_OK)
		rv = put_template (&c.req, pubt, pubn);
	if (rv == CKR_OK)
		rv = put_template (&c.req, privt, privn);
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK)
		rv = get_handle (&c, pub);
	if (rv == CKR_OK)
		rv = get_handle (&c, priv);
	return done (&c, rv);
}

EXPORT CK_RV
C_WrapKey (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k,
           CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	struct call c;
	CK_RV rv;

	if (outlen == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_WrapKey, h);
	if (rv == CKR_OK)
		rv = put_mechanism (&c.req, m);
	if (rv == CKR_OK)
		rv = object (&c, wk, CKR_WRAPPING_KEY_HANDLE_INVALID);
	if (rv == CKR_OK)
		rv = object (&c, k, CKR_KEY_HANDLE_INVALID);
	if (rv == CKR_OK) {
		put_u32 (&c.req, out ? (*outlen > 0xffffffff ? 0xffffffff : *outlen) : 0);
		rv = call (&c);
	}
	if (rv == CKR_OK)
		rv = get_out (&c.r, out, outlen);
	return done (&c, rv);
}

EXPORT CK_RV
C_UnwrapKey (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR in, CK_ULONG n,
             CK_ATTRIBUTE_PTR t, CK_ULONG tn, CK_OBJECT_HANDLE_PTR key)
{
	struct call c;
	CK_RV rv;

	if (key == NULL || (in == NULL && n != 0))
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_UnwrapKey, h);
	if (rv == CKR_OK)
		rv = put_mechanism (&c.req, m);
	if (rv == CKR_OK)
		rv = object (&c, uk, CKR_UNWRAPPING_KEY_HANDLE_INVALID);
	if (rv == CKR_OK) {
		put_bytes (&c.req, in, n);
		rv = put_template (&c.req, t, tn);
	}
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK)
		rv = get_handle (&c, key);
	return done (&c, rv);
}

EXPORT CK_RV
C_DeriveKey (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE_PTR t, CK_ULONG tn,
             CK_OBJECT_HANDLE_PTR key)
{
	struct call c;
	CK_RV rv;

	if (key == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = start (&c, RPC_DeriveKey, h);
	if (rv == CKR_OK)
		rv = put_mechanism (&c.req, m);
	if (rv == CKR_OK)
		rv = object (&c, base, CKR_KEY_HANDLE_INVALID);
	if (rv == CKR_OK)
		rv = put_template (&c.req, t, tn);
	if (rv == CKR_OK)
		rv = call (&c);
	if (rv == CKR_OK)
		rv = get_handle (&c, key);
	return done (&c, rv);
}

EXPORT CK_RV C_SeedRandom (CK_SESSION_HANDLE h, CK_BYTE_PTR seed, CK_ULONG n) { return in_only (RPC_SeedRandom, h, seed, n); }

EXPORT CK_RV
C_GenerateRandom (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG n)
{
	CK_ULONG got = n;
	CK_RV rv;

	if (out == NULL && n != 0)
		return CKR_ARGUMENTS_BAD;
	rv = out_only (RPC_GenerateRandom, h, out, &got);
	if (rv == CKR_OK && got != n)
		rv = CKR_DEVICE_ERROR;
	return rv;
}

/* What the daemon does not offer. */
EXPORT CK_RV C_InitToken (CK_SLOT_ID s, CK_UTF8CHAR_PTR p, CK_ULONG n, CK_UTF8CHAR_PTR l) { (void) s; (void) p; (void) n; (void) l; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_InitPIN (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR p, CK_ULONG n) { (void) h; (void) p; (void) n; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_SetPIN (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR o, CK_ULONG on, CK_UTF8CHAR_PTR n, CK_ULONG nn) { (void) h; (void) o; (void) on; (void) n; (void) nn; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_GetOperationState (CK_SESSION_HANDLE h, CK_BYTE_PTR s, CK_ULONG_PTR n) { (void) h; (void) s; (void) n; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_SetOperationState (CK_SESSION_HANDLE h, CK_BYTE_PTR s, CK_ULONG n, CK_OBJECT_HANDLE e, CK_OBJECT_HANDLE a) { (void) h; (void) s; (void) n; (void) e; (void) a; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_SignRecoverInit (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { (void) h; (void) m; (void) k; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_SignRecover (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG n, CK_BYTE_PTR o, CK_ULONG_PTR on) { (void) h; (void) i; (void) n; (void) o; (void) on; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_VerifyRecoverInit (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { (void) h; (void) m; (void) k; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_VerifyRecover (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG n, CK_BYTE_PTR o, CK_ULONG_PTR on) { (void) h; (void) i; (void) n; (void) o; (void) on; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
static CK_RV dual (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG n, CK_BYTE_PTR o, CK_ULONG_PTR on) { (void) h; (void) i; (void) n; (void) o; (void) on; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_GetFunctionStatus (CK_SESSION_HANDLE h) { (void) h; return current () ? CKR_FUNCTION_NOT_PARALLEL : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_CancelFunction (CK_SESSION_HANDLE h) { (void) h; return current () ? CKR_FUNCTION_NOT_PARALLEL : CKR_CRYPTOKI_NOT_INITIALIZED; }
EXPORT CK_RV C_WaitForSlotEvent (CK_FLAGS f, CK_SLOT_ID_PTR s, CK_VOID_PTR r) { (void) f; (void) s; (void) r; return current () ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED; }

static CK_FUNCTION_LIST function_list = {
	{2, 40},
	C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,
	C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN,
	C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState,
	C_SetOperationState, C_Login, C_Logout, C_CreateObject, C_CopyObject, C_DestroyObject,
	C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue, C_FindObjectsInit, C_FindObjects,
	C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit,
	C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey,
	C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit, C_SignRecover,
	C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal, C_VerifyRecoverInit, C_VerifyRecover,
	dual, dual, dual, dual, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey,
	C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
};
