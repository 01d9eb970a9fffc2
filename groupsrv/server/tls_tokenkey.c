/*
 * tls_tokenkey.c: an EVP_PKEY for the TLS server key whose ECDSA signing
 * runs on the token (see tls_tokenkey.h). The EVP_PKEY itself comes from
 * hsm_key_evp_pkey (hsm/hsm_evp.c, where the legacy EC_KEY_METHOD lives);
 * this file decides which token keys are fit to be the TLS key.
 */
#include "tls_tokenkey.h"

#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>

#include "log.h"

/* Is the token key fit to be the TLS key? NULL if so, else why not. */
static const char *check_key(const hsm_key_info *ki)
{
    if (ki->type == HSM_KEYTYPE_RSA)
        return "is an RSA key: TLS 1.3 needs RSA-PSS signatures, which OpenSSL 3.0 can only delegate "
               "as raw RSA private operations, and groupsrv never offers raw RSA on the token; "
               "make an EC key (P-256 or P-384) for TLS instead (groupsrv tls init --key ec:p256)";
    if (ki->type != HSM_KEYTYPE_EC)
        return "is not an EC key (the TLS key on the token must be EC P-256 or P-384)";
    if (ki->bits != 256 && ki->bits != 384)
        return "is on an unsupported curve (the TLS key on the token must be EC P-256 or P-384)";
    if (!ki->sign)
        return "lacks CKA_SIGN";
    if (!ki->sensitive || ki->extractable || ki->value_readable)
        return "is not sensitive and non-extractable (CKA_SENSITIVE true, CKA_EXTRACTABLE false required)";
    return NULL;
}

int tls_tokenkey_load(hsm_ctx *hsm, const char *uri, EVP_PKEY **out, char *errbuf, size_t errlen)
{
    hsm_key *key = NULL;
    hsm_key_info ki;
    EVP_PKEY *pk = NULL;
    char curve[64] = "";
    const char *why;
    hsm_err he;
    int rc = -1;

    *out = NULL;
    errbuf[0] = '\0';
    if (hsm == NULL || uri == NULL) {
        snprintf(errbuf, errlen, "[tls] key is a pkcs11: URI but no token is open");
        goto out;
    }
    if ((he = hsm_key_find(hsm, uri, HSM_CLASS_PRIVATE, &key)) != HSM_OK) {
        snprintf(errbuf, errlen, "[tls] key %s: %s%s%s", uri, hsm_strerror(he),
                 hsm_last_error_detail()[0] ? ": " : "", hsm_last_error_detail());
        goto out;
    }
    if ((he = hsm_key_get_info(hsm, key, &ki)) != HSM_OK) {
        snprintf(errbuf, errlen, "[tls] key %s: reading its attributes: %s", uri, hsm_strerror(he));
        goto out;
    }
    if ((why = check_key(&ki)) != NULL) {
        snprintf(errbuf, errlen, "[tls] key %s %s", uri, why);
        goto out;
    }
    if (!ki.always_sensitive || !ki.never_extractable)
        log_warn("the TLS key on the token was once readable or extractable (imported?) uri=%s", uri);
    if ((he = hsm_key_evp_pkey(hsm, key, &pk)) != HSM_OK) {
        if (he == HSM_ERR_PUBLIC_KEY)
            snprintf(errbuf, errlen, "[tls] key %s: the token's public key does not parse", uri);
        else if (he == HSM_ERR_NOMEM)
            snprintf(errbuf, errlen, "out of memory");
        else
            snprintf(errbuf, errlen, "[tls] key %s: reading its public key: %s", uri, hsm_strerror(he));
        goto out;
    }
    if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), NULL) != 1 ||
        (strcmp(curve, "prime256v1") != 0 && strcmp(curve, "secp384r1") != 0)) {
        snprintf(errbuf, errlen, "[tls] key %s is on an unsupported curve (P-256 or P-384 required)", uri);
        goto out;
    }
    log_info("TLS key on the token uri=%s curve=%s", uri, curve);
    *out = pk;
    pk = NULL;
    rc = 0;
out:
    EVP_PKEY_free(pk);
    hsm_key_free(key); /* the EVP_PKEY keeps its own reference */
    ERR_clear_error();
    return rc;
}
