/*
 * restparse.h: the group server's answers, from bytes to the structs of
 * restclient.h, apart from the transport. Pure functions (JSON through
 * jansson, strict base64, PEM markers): no network, no handle. restclient.c
 * calls them on every answer it receives; tests/fuzz/fuzz_restclient.c
 * feeds them hostile answers directly. Internal to client/ and its tests.
 *
 * Every body[0, len) is untrusted: not NUL-terminated, may hold NULs; the
 * caller caps len (restclient: max_response). Outputs are cleared on entry
 * and filled only on GS_REST_OK; they are released with the *_clear
 * functions of restclient.h, which wipe content keys. On failure the
 * result is GS_REST_ERR_BAD_ANSWER (or NOMEM) and why (why_size bytes;
 * NULL/0 = not wanted) says in one printable line what was wrong.
 */
#ifndef GS_RESTPARSE_H
#define GS_RESTPARSE_H

#include <stdbool.h>
#include <stddef.h>

#include "restclient.h"

/* HTTP status -> result: 2xx OK; 401, 403, 404, 429, 503 their own codes;
 * 408 TIMEOUT (the server stopped waiting for the request); other 4xx REJECTED, other 5xx SERVER; anything else (1xx, 3xx: redirects
 * are never followed) BAD_ANSWER. */
gs_rest_err gs_rest_parse_status(long status);

/* Is a Content-Type header value JSON ("application/json", any case,
 * parameters allowed)? NULL (no header) is not. */
bool gs_rest_parse_is_json(const char *content_type);

/* The {"error": {"code", "message"}} of a refusal into code and message
 * (printable ASCII, truncated to fit); both "" for any other body (an
 * error page from a proxy, say). */
void gs_rest_parse_error(const unsigned char *body, size_t len, char *code, size_t code_size, char *message,
                         size_t message_size);

/* GET /v1/groups/{g}. */
gs_rest_err gs_rest_parse_group_info(const unsigned char *body, size_t len, gs_group_info *out, char *why,
                                     size_t why_size);

/* A PEM answer (certificate chain): text holding at least one
 * "-----BEGIN CERTIFICATE-----" block (not parsed further). *pem is a
 * NUL-terminated copy of the body; caller frees. */
gs_rest_err gs_rest_parse_pem(const unsigned char *body, size_t len, char **pem, size_t *pem_len, char *why,
                              size_t why_size);

/* POST unwrap, for the delivery asked: the key (deliver=tls; 16, 24 or 32
 * bytes; the JSON copy of it is wiped) or the RecipientInfo. */
gs_rest_err gs_rest_parse_unwrap(const unsigned char *body, size_t len, gs_deliver deliver, gs_unwrap_result *out,
                                 char *why, size_t why_size);

/* POST unwrap-batch: exactly n results ("results", or "items"), item i
 * parsed for delivers[i]. On GS_REST_OK item_errs[i] is each item's own
 * result (an error item maps by its "status", else its error code). */
gs_rest_err gs_rest_parse_unwrap_batch(const unsigned char *body, size_t len, const gs_deliver *delivers, size_t n,
                                       gs_unwrap_result *outs, gs_rest_err *item_errs, char *why, size_t why_size);

/* POST rewrap: "recipient_info" (to=group-secret) or "recipient_infos"
 * (at least one for group-secret; any number for members), with
 * "members" (one address per RecipientInfo, else BAD_ANSWER) when given. */
gs_rest_err gs_rest_parse_rewrap(const unsigned char *body, size_t len, gs_rewrap_to to, gs_ri_list *out, char *why,
                                 size_t why_size);

/* GET secret-keys. */
gs_rest_err gs_rest_parse_secret_keys(const unsigned char *body, size_t len, gs_secret_keys *out, char *why,
                                      size_t why_size);

/* Copies an untrusted string for display: printable ASCII only (others
 * become '?'), truncated to size - 1; NULL src gives "". */
void gs_rest_sanitise(char *dst, size_t size, const char *src);

#endif
