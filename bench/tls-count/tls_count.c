/* The load harness's handshake counter (bench/run builds it and preloads it into wrk).
 *
 * Around OpenSSL's SSL_connect: counts the handshakes that completed, and how many of them
 * resumed a session (SSL_session_reused); with TLS_COUNT_FULL=1 in the environment, drops
 * the session the client kept before each handshake starts (wrk calls SSL_connect again
 * until a non-blocking handshake completes), so every one is a full handshake (wrk
 * keeps its last session across `Connection: close` reconnects, through SSL_clear). It
 * also counts the handshakes that settled on a protocol older than TLS 1.3 (the harness
 * compares proxies on TLS 1.3 only: a TLS 1.2 resumption makes no key exchange at all). The
 * counts are written as "full resumed older" to the file TLS_COUNT_OUT names when the
 * process exits.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static atomic_long full_handshakes;
static atomic_long resumed_handshakes;
static atomic_long older_handshakes;

int SSL_connect(SSL *ssl) {
    static int (*real)(SSL *);
    if (!real) {
        real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    }
    const char *force = getenv("TLS_COUNT_FULL");
    if (force && force[0] == '1' && SSL_in_before(ssl)) {
        SSL_set_session(ssl, NULL);
    }
    int result = real(ssl);
    if (result == 1) {
        if (SSL_session_reused(ssl)) {
            atomic_fetch_add(&resumed_handshakes, 1);
        } else {
            atomic_fetch_add(&full_handshakes, 1);
        }
        if (SSL_version(ssl) != TLS1_3_VERSION) {
            atomic_fetch_add(&older_handshakes, 1);
        }
    }
    return result;
}

__attribute__((destructor)) static void write_counts(void) {
    const char *path = getenv("TLS_COUNT_OUT");
    if (!path) {
        return;
    }
    FILE *out = fopen(path, "w");
    if (!out) {
        return;
    }
    fprintf(out, "%ld %ld %ld\n", atomic_load(&full_handshakes), atomic_load(&resumed_handshakes),
            atomic_load(&older_handshakes));
    fclose(out);
}
