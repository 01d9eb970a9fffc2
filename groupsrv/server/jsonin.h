/*
 * jsonin.h: the common case of a request body, read without jansson's
 * parser. The bodies of the hot endpoints (an unwrap's is one object
 * holding a base64 RecipientInfo of about 550 characters) are flat
 * objects of plain strings; json_loadb lexes them a character at a time,
 * 6 us per unwrap on this machine, most of what the network process spent
 * on JSON. This reads exactly such objects and gives up on anything else,
 * so that jansson still decides every other input and words its errors.
 * Owned by groupsrv/server/ (core.c's srv_json_body).
 */
#ifndef GS_SRV_JSONIN_H
#define GS_SRV_JSONIN_H

#include <stddef.h>

#include <jansson.h>

/* The object in text[0..len) when it is one flat JSON object whose keys
 * and string values are printable ASCII without escapes, whose other
 * values are integers of at most 18 digits (no "-0"), with no key twice:
 * the same object json_loadb(text, len, JSON_REJECT_DUPLICATES) makes of
 * it (the caller's reference). NULL for any other text, valid or not, and
 * when out of memory: the caller then uses json_loadb. */
json_t *jsonin_flat_object(const char *text, size_t len);

#endif
