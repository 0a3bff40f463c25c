/*
 * libkeywarden-pkcs11.so: the PKCS #11 module of keywarden.
 *
 * The daemon serves PKCS #11 itself, in p11-kit's RPC protocol, on a Unix
 * socket (keywarden serve --pkcs11 PATH). This module is p11-kit's own
 * client module, p11-kit-client.so, pointed at that socket: p11-kit's
 * client already handles threads, fork, C_Finalize and C_Initialize again,
 * and a daemon that is not there. This file only chooses the socket:
 *
 *   $KEYWARDEN_PKCS11_SOCKET, else /run/keywarden/pkcs11.sock when it
 *   exists, else $XDG_RUNTIME_DIR/keywarden/pkcs11.sock.
 *
 * p11-kit-client.so reads its server's address from P11_KIT_SERVER_ADDRESS
 * once, in C_GetFunctionList; the variable is set for that call only and
 * then restored, so the host process's environment is left as it was.
 * (setenv is not safe against another thread reading the environment at
 * that moment; programs load modules before starting threads, or from one.)
 *
 * The module holds no key and no PIN. It is C so that no language runtime
 * is loaded into the programs that use it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef P11_KIT_CLIENT
#define P11_KIT_CLIENT "p11-kit-client.so"
#endif

#define SYSTEM_SOCKET "/run/keywarden/pkcs11.sock"
#define CKR_OK 0UL
#define CKR_GENERAL_ERROR 5UL
#define CKR_HOST_MEMORY 2UL
#define CKR_ARGUMENTS_BAD 7UL

typedef unsigned long ck_rv;
typedef ck_rv (*get_function_list) (void **list);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *client;

static const char *
socket_path (char *buf, size_t n)
{
	const char *p = secure_getenv ("KEYWARDEN_PKCS11_SOCKET");
	struct stat st;

	if (p != NULL && p[0] != '\0')
		return p;
	if (stat (SYSTEM_SOCKET, &st) == 0 && S_ISSOCK (st.st_mode))
		return SYSTEM_SOCKET;
	p = secure_getenv ("XDG_RUNTIME_DIR");
	if (p != NULL && p[0] == '/' &&
	    snprintf (buf, n, "%s/keywarden/pkcs11.sock", p) < (int) n)
		return buf;
	return SYSTEM_SOCKET;
}

__attribute__((visibility ("default"))) ck_rv
C_GetFunctionList (void **list)
{
	char path[4096], address[4200];
	char *saved = NULL;
	const char *old;
	get_function_list get;
	ck_rv rv;

	if (list == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock (&lock);
	if (client == NULL)
		client = dlopen (P11_KIT_CLIENT, RTLD_NOW | RTLD_LOCAL);
	if (client == NULL) {
		fprintf (stderr, "keywarden-pkcs11: cannot load %s: %s\n", P11_KIT_CLIENT, dlerror ());
		pthread_mutex_unlock (&lock);
		return CKR_GENERAL_ERROR;
	}
	get = (get_function_list) dlsym (client, "C_GetFunctionList");
	if (get == NULL) {
		pthread_mutex_unlock (&lock);
		return CKR_GENERAL_ERROR;
	}
	if (snprintf (address, sizeof address, "unix:path=%s",
	              socket_path (path, sizeof path)) >= (int) sizeof address) {
		pthread_mutex_unlock (&lock);
		return CKR_ARGUMENTS_BAD;
	}
	old = getenv ("P11_KIT_SERVER_ADDRESS");
	if (old != NULL && (saved = strdup (old)) == NULL) {
		pthread_mutex_unlock (&lock);
		return CKR_HOST_MEMORY;
	}
	setenv ("P11_KIT_SERVER_ADDRESS", address, 1);
	rv = get (list);
	if (saved != NULL) {
		setenv ("P11_KIT_SERVER_ADDRESS", saved, 1);
		free (saved);
	} else {
		unsetenv ("P11_KIT_SERVER_ADDRESS");
	}
	pthread_mutex_unlock (&lock);
	return rv;
}
