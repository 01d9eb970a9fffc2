/*
 * envelope.h: CMS / S/MIME messages for groupsrv (RFC 5652, 5083/5084,
 * 3560/8017 RSA-OAEP key transport, 5753 ECDH, 3394/5649 KEK wrap, 8551).
 *
 * The only place in groupsrv that touches CMS internals. Built on
 * OpenSSL 3's CMS and ASN.1 template APIs; no hand-written DER parser.
 *
 * Streaming: messages are read and written in bounded memory. A parsed
 * env_message keeps its (possibly 100 MB) encrypted content in a private
 * temporary file, never in RAM, and copies it byte-for-byte on write.
 *
 * Decryption writes plaintext to a BIO as it goes; for GCM the tag is only
 * known good at the end. Callers that write files must write to a temp
 * file (util_atomic_open) and commit only on ENV_OK; on any error the bytes
 * already written are garbage to be discarded.
 *
 * Temporary files are created in $TMPDIR (else /tmp) and unlinked at once.
 * Memory: a message uses about 64 KiB of buffers plus at most 4 MiB for
 * the parts before the content (originatorInfo, RecipientInfos) and 1 MiB
 * for those after it, whatever the content size.
 *
 * Ownership: x_new, x_read and x_parse results are freed by the matching x_free
 * (NULL fine). Buffers returned through unsigned char ** are malloc'd and
 * owned by the caller (content keys: wipe with OPENSSL_cleanse).
 * X509/EVP_PKEY/BIO arguments are borrowed, never freed by this library.
 */
#ifndef GS_ENVELOPE_H
#define GS_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

typedef enum env_err {
    ENV_OK = 0,
    ENV_ERR_NOMEM,
    ENV_ERR_ARGS,
    ENV_ERR_IO,            /* reading or writing a BIO / temp file failed */
    ENV_ERR_TRUNCATED,     /* input ends inside the structure */
    ENV_ERR_NOT_CMS,       /* not DER/BER CMS, nor S/MIME around it */
    ENV_ERR_MIME,          /* S/MIME framing malformed (header fields, multipart structure) */
    ENV_ERR_CONTENT_TYPE,  /* CMS but not (Auth)EnvelopedData */
    ENV_ERR_NO_RECIPIENT,  /* no RecipientInfo for the given certificate / key id */
    ENV_ERR_UNSUPPORTED,   /* algorithm or RecipientInfo type we do not do */
    ENV_ERR_AUTH,          /* GCM tag mismatch or CBC padding error: content tampered or wrong key */
    ENV_ERR_KEY,           /* content key or KEK of the wrong length, or unwrap failed */
    ENV_ERR_CERT,          /* certificate unusable (no RSA/EC key, malformed) */
    ENV_ERR_TOO_LARGE,     /* over a configured cap */
    ENV_ERR_CRYPTO,        /* any other OpenSSL failure */
    ENV_ERR_ENCODING,      /* an S/MIME part whose Content-Transfer-Encoding is not base64 */
    ENV_ERR_BASE64,        /* text in the base64 that base64 is not (a footer added inside it, say) */
} env_err;

const char *env_strerror(env_err err);

typedef enum env_format {
    ENV_FORMAT_AUTO = 0, /* input only: S/MIME, PEM or DER by sniffing */
    ENV_FORMAT_SMIME,    /* RFC 8551 application/pkcs7-mime, base64 */
    ENV_FORMAT_DER,
    ENV_FORMAT_PEM,
} env_format;

typedef enum env_cipher {
    ENV_CIPHER_AES256_GCM = 1, /* AuthEnvelopedData (default) */
    ENV_CIPHER_AES256_CBC,     /* EnvelopedData, for old clients */
    ENV_CIPHER_AES128_GCM,     /* accepted on input */
    ENV_CIPHER_AES128_CBC,     /* accepted on input (NSS, gpgsm and Outlook send it by default) */
    ENV_CIPHER_AES192_GCM,     /* accepted on input */
    ENV_CIPHER_AES192_CBC,     /* accepted on input */
    ENV_CIPHER_DES3_CBC,       /* accepted on input only, never written: the default of OpenSSL 3.0's
                                  `openssl cms|smime -encrypt`, and what old Outlook sends */
} env_cipher;

typedef enum env_kt_alg {
    ENV_KT_RSA_OAEP_SHA1 = 1, /* RSAES-OAEP default parameters */
    ENV_KT_RSA_OAEP_SHA256,   /* SHA-256, MGF1-SHA-256 */
    ENV_KT_RSA_PKCS1V15,      /* parsed; produced only by env_ktri_build (member copies) */
    ENV_KT_ECDH,              /* KARI, dhSinglePass-stdDH-sha*kdf-scheme */
} env_kt_alg;

/* ---- one RecipientInfo (what travels to and from the group server) ---- */

typedef enum env_ri_type { ENV_RI_KTRI = 1, ENV_RI_KARI, ENV_RI_KEKRI, ENV_RI_OTHER } env_ri_type;

typedef struct env_recipient env_recipient;

/* Parses one DER RecipientInfo (the CHOICE, e.g. as sent to /unwrap).
 * Exactly one: trailing bytes are ENV_ERR_NOT_CMS. Input cap 64 KiB.
 * pwri/ori RecipientInfos parse as ENV_RI_OTHER. */
env_err env_recipient_parse(const unsigned char *der, size_t len, env_recipient **out);
/* The same, for a RecipientInfo that should name one of the ncerts certs
 * (the group server's key versions): an issuer name byte for byte the
 * issuer of one of them is known to be a valid Name and is not decoded,
 * which is most of the cost of parsing. Accepts and refuses exactly what
 * env_recipient_parse does. */
env_err env_recipient_parse_known(const unsigned char *der, size_t len, X509 *const *certs, size_t ncerts,
                                  env_recipient **out);
void env_recipient_free(env_recipient *ri);
env_ri_type env_recipient_type(const env_recipient *ri);
/* Whether the RecipientInfo's version is the one RFC 5652 6.2 fixes for
 * its kind: KTRI 0 (issuerAndSerialNumber) or 2 (subjectKeyIdentifier),
 * KARI 3, KEKRI 4. Parsing accepts any version; a server that acts on
 * the RecipientInfo checks it. */
bool env_recipient_version_valid(const env_recipient *ri);
/* Key transport algorithm (KTRI) or ENV_KT_ECDH (KARI). ENV_ERR_UNSUPPORTED
 * for a well-formed one not in ENV_KT_SUPPORTED (RSA-OAEP with SHA-384, or
 * SHA-256 with MGF1-SHA-1 as Java's OAEPWithSHA-256AndMGF1Padding; a
 * KARI with the SHA-384 KDF, or a 3DES or padded AES key wrap);
 * ENV_ERR_NOT_CMS for RSA-OAEP parameters that do not decode, or a KARI
 * whose KeyWrapAlgorithm is missing or garbled. */
env_err env_recipient_kt_alg(const env_recipient *ri, env_kt_alg *alg);
/* What env_recipient_kt_alg takes, for refusals' text (one wording for the
 * group server and the exploder). */
#define ENV_KT_SUPPORTED                                                                             \
    "RSA-OAEP with SHA-1 or SHA-256 (MGF1 with the same hash, no label), RSA PKCS#1 v1.5, or ECDH "   \
    "(dhSinglePass-stdDH with the SHA-1 or SHA-256 X9.63 KDF) with an AES key wrap"
/* Does this KTRI/KARI name the certificate (issuerAndSerialNumber or
 * subjectKeyIdentifier)? */
bool env_recipient_matches_cert(const env_recipient *ri, X509 *cert);
/* Does this KTRI/KARI name, by issuerAndSerialNumber, a certificate that
 * cert's issuer issued (cert itself or another)? A subjectKeyIdentifier
 * names no issuer: false. */
bool env_recipient_names_issuer_of(const env_recipient *ri, X509 *cert);
/* Does this KTRI/KARI name a recipient by subjectKeyIdentifier alone
 * (openssl cms -keyid, Outlook set to key identifiers), so that no issuer
 * tells whose certificate it is? */
bool env_recipient_names_key_id(const env_recipient *ri);
/* KTRI: the encrypted key. KEKRI: the wrapped key. KARI: the wrapped key of
 * the RecipientEncryptedKey matching cert (cert may be NULL for the first).
 * The pointer is borrowed from ri. */
env_err env_recipient_encrypted_key(const env_recipient *ri, X509 *cert, const unsigned char **key, size_t *len);
/* KEKRI: the key identifier (borrowed). */
env_err env_recipient_kek_id(const env_recipient *ri, const unsigned char **id, size_t *len);

/* KARI parameters for the token-side ECDH unwrap (see hsm_ecdh_input). */
typedef struct env_kari_params {
    unsigned char *peer_point;   /* originator's ephemeral public point, uncompressed */
    size_t peer_point_len;
    int kdf_sha256;              /* 1: sha256kdf, 0: sha1kdf */
    size_t kek_len;              /* from the key wrap algorithm */
    unsigned char *shared_info;  /* DER ECC-CMS-SharedInfo for the X9.63 KDF */
    size_t shared_info_len;
    unsigned char *wrapped_key;
    size_t wrapped_key_len;
} env_kari_params;
env_err env_recipient_kari_params(const env_recipient *ri, X509 *cert, env_kari_params *out);
void env_kari_params_clear(env_kari_params *p);
/* Would the group server try to unwrap this RecipientInfo with cert's
 * key? Its checks before the token, for an exploder that refuses at
 * SMTP time what the server would refuse for good hours later: a version
 * RFC 5652 fixes, a key transport in ENV_KT_SUPPORTED for cert's key
 * type, an encrypted key as long as cert's RSA modulus; for a KARI an uncompressed
 * originator point on cert's curve, a wrapped key of a length an AES
 * key wrap makes and an X9.63 shared info (ukm included) of at most 1024
 * bytes. ENV_OK; ENV_ERR_UNSUPPORTED (well-formed, but an
 * algorithm or a point form it does not take); ENV_ERR_NOT_CMS
 * (malformed); ENV_ERR_NO_RECIPIENT (a KARI that does not name cert). */
env_err env_recipient_check_unwrap(const env_recipient *ri, X509 *cert);
/* Is point (an encoded EC point: a KeyAgreeRecipientInfo's originator
 * key) a point of the curve of cert's EC public key, and not the point at
 * infinity? The key holder checks it before a token derives with the
 * group key: a token that does not check would compute with the group's
 * private key in a small group of the attacker's choice (an invalid-curve
 * attack), and the answers would give the key away a few bits at a time.
 * The exploder makes the same check at SMTP time
 * (env_recipient_check_unwrap). false also when cert holds no EC key. */
bool env_ec_point_on_cert_curve(X509 *cert, const unsigned char *point, size_t len);

/* Client-side helpers: recover the content key from an RI with a key the
 * caller holds (own key file; or a group secret key version).
 * with_pkey: KTRI (RSA-OAEP SHA-1/SHA-256, PKCS#1 v1.5) or KARI (software
 * ECDH, X9.63 KDF, AES unwrap); cert, when given, must be named by the RI
 * (else ENV_ERR_NO_RECIPIENT) and picks the KARI RecipientEncryptedKey.
 * ENV_ERR_KEY when the key does not decrypt, ENV_ERR_UNSUPPORTED for other
 * algorithms (e.g. OAEP with SHA-384). kekri: RFC 3394 or RFC 5649 unwrap;
 * ENV_ERR_KEY for a wrong or wrong-length KEK. cek gets at most cekcap bytes. */
env_err env_recipient_decrypt_with_pkey(const env_recipient *ri, X509 *cert, EVP_PKEY *pkey,
                                        unsigned char *cek, size_t cekcap, size_t *ceklen);
env_err env_recipient_decrypt_kekri(const env_recipient *ri, const unsigned char *kek, size_t keklen,
                                    unsigned char *cek, size_t cekcap, size_t *ceklen);

/* Builders (server side). DER out, caller frees. */
/* KTRI to a member certificate, issuerAndSerialNumber, with the given
 * already-encrypted key (wrapped inside the token). alg: RSA-OAEP SHA-1 or
 * SHA-256, or ENV_KT_RSA_PKCS1V15 (rsaEncryption, NULL parameters: what
 * NSS and gpgsm readers decrypt); else ENV_ERR_ARGS. */
env_err env_ktri_build(X509 *recipient, env_kt_alg alg, const unsigned char *enc_key, size_t enc_len,
                       unsigned char **der, size_t *len);
/* KEKRI: kekid = our key version id, AES key wrap (RFC 3394) with a
 * kek_bits-bit KEK (128/192/256), or RFC 5649 when pad is true. */
env_err env_kekri_build(const unsigned char *kek_id, size_t kek_id_len, unsigned kek_bits, bool pad,
                        const unsigned char *wrapped, size_t wrapped_len, unsigned char **der, size_t *len);

/* ---- content-encryption algorithms ---------------------------------------- */

/* Key length in bytes of a content-encryption algorithm as a client names
 * it: a canonical name ("aes-128-cbc", ... "aes-256-gcm", "des-ede3-cbc",
 * "chacha20-poly1305"; any case), an OpenSSL short name ("id-aes128-GCM")
 * or the dotted OID of EncryptedContentInfo's contentEncryptionAlgorithm
 * ("2.16.840.1.101.3.4.1.2"). *canonical (may be NULL) gets the canonical
 * name (static). ENV_ERR_UNSUPPORTED for anything else, ENV_ERR_ARGS for
 * NULL, empty or longer than 64 characters. Outputs cleared on failure. */
env_err env_content_alg_key_length(const char *name_or_oid, size_t *keylen, const char **canonical);

/* ---- whole messages ---------------------------------------------------- */

typedef struct env_message env_message;

/* Reads a message (S/MIME mail with outer headers, PEM or DER CMS). The
 * encrypted content is spooled to an unlinked temp file. max_size caps the
 * input (0 = 1 GiB). S/MIME: a Content-Type env_mime_is_smime takes,
 * base64; LF or CRLF. DER may be BER with
 * indefinite lengths (openssl cms -stream).
 * Errors: ENV_ERR_TRUNCATED (cut anywhere), ENV_ERR_NOT_CMS (not CMS, or a
 * mail that is not pkcs7-mime), ENV_ERR_ENCODING (a Content-Transfer-
 * Encoding other than base64), ENV_ERR_BASE64 (a character base64 has
 * not; or, where it would be ENV_ERR_TRUNCATED, text after the base64's
 * end or with white space inside a line: a footer added inside the part),
 * ENV_ERR_MIME (header fields, multipart structure),
 * ENV_ERR_CONTENT_TYPE (SignedData etc., multipart/signed),
 * ENV_ERR_UNSUPPORTED (content cipher other than AES-CBC or 3DES-CBC in
 * EnvelopedData or AES-GCM in AuthEnvelopedData, e.g. RC2 or Camellia;
 * detached content),
 * ENV_ERR_NO_RECIPIENT (no RecipientInfo at all), ENV_ERR_TOO_LARGE. */
env_err env_message_read(BIO *in, env_format fmt, size_t max_size, env_message **out);
/* Flags of env_message_read_flags. ENV_READ_IN_MULTIPART: S/MIME mail may
 * also carry the pkcs7-mime part one level down, for a reader (never for
 * a sender's or the list's check that a message is encrypted as a whole):
 * in a multipart/mixed (a list or gateway added a footer or disclaimer
 * outside the encryption; the other parts are skipped, two pkcs7-mime
 * parts are ENV_ERR_MIME, none ENV_ERR_NOT_CMS), or as the first part of
 * a multipart/signed (encrypted, then signed; the signature is neither
 * read nor checked; another first part is ENV_ERR_CONTENT_TYPE). The
 * message's outer headers are the top-level ones, as without the flag. */
#define ENV_READ_IN_MULTIPART 0x1u
env_err env_message_read_flags(BIO *in, env_format fmt, unsigned flags, size_t max_size, env_message **out);
/* Do a MIME entity's Content-Type and Content-Disposition values (any
 * case, unfolded; disposition may be NULL) make it S/MIME CMS?
 * application/pkcs7-mime or application/x-pkcs7-mime, or (RFC 8551 3.8)
 * application/octet-stream named *.p7m by its name or filename parameter. */
bool env_mime_is_smime(const char *content_type, const char *content_disposition);
void env_message_free(env_message *msg);
/* How env_message_read takes a mail's top-level entity, for a program
 * that passes the message on as it came (the exploder's forward mode)
 * and must cut or judge it as the reader does, never by a reading of its
 * own: two readers of Content-Type and Content-Transfer-Encoding once
 * disagreed (a comment in the encoding, a field given twice, a stray
 * CR), and a copy went on uncut, or mail was refused with a wrong reason. */
typedef struct env_mime_top {
    char media_type[128]; /* Content-Type's type/subtype, lower case ("" without the field) */
    bool smime;           /* a Content-Type (and Content-Disposition) env_mime_is_smime takes */
    bool base64;          /* a Content-Transfer-Encoding of base64 (a comment after it allowed) */
    size_t body;          /* offset of the body: just past the blank line */
    size_t b64_stop;      /* offset of the body's first '-', where the reader's base64 decoder
                             stops wherever on a line it is (len when none): bytes from there on
                             are never read */
} env_mime_top;
/* Reads the header block of the message data[0, len) as env_message_read
 * does (the last of a field given twice counts, folded values unfolded,
 * parameters in any case). ENV_ERR_NOT_CMS or ENV_ERR_MIME for a header
 * block it refuses (no header line: a blank first line, or one after only
 * an mbox "From " line; a NUL, a Content-* field longer than 16 KiB), ENV_ERR_TRUNCATED without a blank line, ENV_ERR_TOO_LARGE over
 * 1 MiB of header fields; *top cleared on failure. */
env_err env_mime_read_top(const void *data, size_t len, env_mime_top *top);

env_cipher env_message_cipher(const env_message *msg);
/* The content-encryption algorithm's canonical name ("aes-128-cbc",
 * "aes-192-cbc", "aes-256-cbc", "aes-128-gcm", "aes-192-gcm",
 * "aes-256-gcm", "des-ede3-cbc"): what a client sends as "content_algorithm" with an unwrap
 * so the group server knows the content key's length. Static string. */
const char *env_message_content_alg(const env_message *msg);
/* Length in bytes of the message's content key (16, 24 or 32; 3DES: 24). */
size_t env_message_key_length(const env_message *msg);
/* An upper bound, in bytes, of what env_message_decrypt writes: the size
 * of the encryptedContent field with its BER headers (the plaintext is
 * never longer than its ciphertext). 0 for NULL. */
size_t env_message_content_max(const env_message *msg);
size_t env_message_recipient_count(const env_message *msg);
/* DER of RecipientInfo i (caller frees). */
env_err env_message_recipient_der(const env_message *msg, size_t i, unsigned char **der, size_t *len);
/* Index of the KTRI/KARI that names cert, or of the KEKRI with kek_id. */
env_err env_message_find_recipient(const env_message *msg, X509 *cert, size_t *index);
env_err env_message_find_kekri(const env_message *msg, const unsigned char *kek_id, size_t kek_id_len,
                               size_t *index);
/* Replaces all RecipientInfos (each a DER RecipientInfo) without touching
 * the encrypted content. To add, pass the old ones too. Each is checked to
 * be one well-formed RecipientInfo (ENV_ERR_ARGS otherwise; msg unchanged). */
env_err env_message_set_recipients(env_message *msg, const unsigned char *const *ders, const size_t *lens,
                                   size_t n);
/* Leaves the message's originatorInfo (RFC 5652 6.1: certificates and
 * CRLs of the originator, optional, covered by no MAC) out of what
 * env_message_write writes; the version is recomputed without it. For
 * a copy whose RecipientInfos were replaced: what it carried was for the
 * originator's key agreement with the recipients dropped, and libksba
 * (gpgsm 2.2.40) refuses any EnvelopedData that has one ("Unsupported
 * CMS object"). Does the message have one: env_message_has_originator. */
void env_message_drop_originator(env_message *msg);
bool env_message_has_originator(const env_message *msg);

/* Outer RFC 5322 header block of an S/MIME input (raw lines, LF or CRLF as
 * read, without MIME-Version/Content-* lines, which are regenerated on
 * write); "" for DER/PEM input. Borrowed. */
const char *env_message_outer_headers(const env_message *msg);

/* Did the input hold bytes after the end of the ContentInfo (words of a
 * footer that happen to decode as base64 after the S/MIME part's base64,
 * say)? The reader ignores them; a copy that goes on as it came would
 * carry them. */
bool env_message_trailing(const env_message *msg);

/* Decrypts the content with a known content key into out (the inner MIME
 * entity for S/MIME). ENV_ERR_AUTH on tag or padding failure. */
env_err env_message_decrypt(const env_message *msg, const unsigned char *cek, size_t ceklen, BIO *out);
/* Convenience for option C / own keys: find and decrypt our RI with pkey. */
env_err env_message_decrypt_with_pkey(const env_message *msg, X509 *cert, EVP_PKEY *pkey, BIO *out);

/* Writes the message. For S/MIME: outer_headers (NULL = the ones read;
 * raw header lines, a missing final newline is added) followed by the
 * pkcs7-mime headers and base64 body (LF line ends; smime-type is
 * authEnveloped-data for AuthEnvelopedData per RFC 8551, else
 * enveloped-data). The small parts are re-encoded as DER with definite
 * lengths (EnvelopedData version recomputed per RFC 5652 6.1 for the new
 * RecipientInfos); the encryptedContent is copied byte for byte, as one
 * primitive OCTET STRING: the BER chunks of a streamed message (openssl
 * cms -stream, env_encrypt) are joined, since gpgsm 2.2 misreads chunks
 * inside definite lengths. */
env_err env_message_write(const env_message *msg, env_format fmt, const char *outer_headers, BIO *out);

/* ---- encryption --------------------------------------------------------- */

typedef struct env_encrypt_opts {
    env_cipher cipher;     /* 0 = AES-256-GCM */
    env_kt_alg kt;         /* RSA recipients: 0 = OAEP-SHA256; EC recipients use ECDH */
    env_format out_format; /* 0 = S/MIME */
    bool input_is_mime;    /* S/MIME output: input is an RFC 5322 message whose routing
                              headers (From To Cc Date Message-ID Subject Reply-To
                              In-Reply-To References) are copied outside; the whole
                              message stays inside. false: input is opaque bytes. */
} env_encrypt_opts;

/* Encrypts in (streamed) to every certificate: one content key, one
 * RecipientInfo per certificate (issuerAndSerialNumber). RSA: KTRI with
 * RSA-OAEP (opts->kt); EC: KARI, dhSinglePass-stdDH-sha256kdf-scheme with
 * the AES key wrap of the content key's size. With input_is_mime the inner
 * message is put in canonical CRLF form (RFC 8551 3.1.1); otherwise the
 * bytes are encrypted as they are. ENV_ERR_CERT for keys neither RSA nor EC,
 * ENV_ERR_ARGS for PKCS#1 v1.5 or ECDH asked for an RSA key. */
env_err env_encrypt(const env_encrypt_opts *opts, X509 *const *recips, size_t n, BIO *in, BIO *out);

#endif
