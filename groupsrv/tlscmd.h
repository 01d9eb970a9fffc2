/*
 * tlscmd.h: `groupsrv tls init`, the TLS server key on the token.
 * Owned by groupsrv/ (tlscmd.c).
 */
#ifndef GS_TLSCMD_H
#define GS_TLSCMD_H

struct gs_config;

/* groupsrv tls init --dns NAME --out FILE [--key ec:p256|ec:p384]
 * [--subject CN] [--label LABEL] [--days N]: generates an EC key pair on
 * the token (usage SIGN only, sensitive, never extractable), issues its
 * server certificate with the local CA (SAN DNS, EKU serverAuth) and
 * writes only the certificate (PEM) to FILE. cfg is borrowed; argv[0] is
 * "tls". Prints errors to stderr and returns the exit status of main.c's
 * table (0 ok, 1 failed, 2 usage, 3 label taken, 4 token, 5 config). */
int gs_cmd_tls(const struct gs_config *cfg, int argc, char **argv);

#endif
