/*
 * signing.h — the server's Ed25519 key pair and the mandate artifacts it signs.
 *
 * The key lives in <data-dir>/signing.key; its public half is published as a JWK
 * (GET /v1/keys/signing) and artifacts are JWS compact tokens verified offline by
 * ch_artifact_verify() (charter.h).
 */
#ifndef CHARTER_CORE_SIGNING_H
#define CHARTER_CORE_SIGNING_H

#include "charter.h"

typedef struct ch__signer ch__signer;

/* Loads <data_dir>/signing.key, creating it with a fresh key on first use. The file is
 * one line of text, "ed25519:" followed by the 32-byte seed in unpadded base64url
 * (43 characters) and a newline; it is created 0600 (O_CREAT|O_EXCL on a temporary
 * name, written and fsynced, then linked into place and the directory fsynced, so a
 * crash never leaves a partial key file). A file that is not in that form, or that
 * group or others may access, is refused with CH_CONFIG; CH_IO when it cannot be read
 * or written. The secret key is kept in sodium_malloc memory (read-only once loaded)
 * and wiped by ch__signer_close. The signer is immutable once open: any number of
 * threads may sign with it at once. */
ch_status ch__signer_open(const char *data_dir, ch__signer **out, ch_err *e);

/* Wipes the secret key and frees s (NULL is a no-op). */
void ch__signer_close(ch__signer *s);

/* The public key as a JWK: {"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig",
 * "kid":K,"x":X}, X the public key and K the first 12 bytes of its SHA-256, both in
 * unpadded base64url. A new reference, or NULL when memory runs out. */
json_t *ch__signer_jwk(const ch__signer *s);

/* The key id (16 characters of base64url), owned by s. */
const char *ch__signer_kid(const ch__signer *s);

/* Signs payload (a JSON object) into a JWS compact token: base64url(header) "."
 * base64url(payload) "." base64url(signature), header the canonical JSON of
 * {"alg":"EdDSA","kid":K,"typ":"charter-artifact"}, payload its canonical JSON, and
 * the signature Ed25519 over the ASCII "header.payload". Returns a malloc'd string
 * (free()), or NULL when memory runs out. */
char *ch__artifact_sign(const ch__signer *s, const json_t *payload);

#endif /* CHARTER_CORE_SIGNING_H */
