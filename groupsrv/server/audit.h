/*
 * audit.h: the hash-chained audit log of the group server (JSON lines).
 * Owned by groupsrv/server/. Not the diagnostic log (common/log.h).
 *
 * One appender per process, shared by all threads (internal mutex); each
 * holds flock(2) on the file while it writes and continues from the file's
 * last line if another process appended (`groupsrv audit rotate`). Each line is
 * one JSON object whose "prev" field is the hex SHA-256 of the previous line
 * (without its newline; 64 zeros for the first line), so deleting or editing
 * a line breaks the chain at the next line. Records are queued in memory
 * and written by a group-commit round: under the flock, everything queued
 * by then in one write(2) on an O_APPEND descriptor (each line chained to
 * the one before as it is formatted), then one fdatasync(2).
 * audit_append returns only after an fdatasync that started after its
 * line was written: a caller that gets AUDIT_OK may answer its client.
 * Concurrent appenders share one round (group commit); a failed write
 * fails exactly its records, a failed fdatasync every record it covered.
 * The key holder queues without waiting (audit_write) and holds each
 * answer until a round (its syncer's, or a worker's) made it durable.
 */
#ifndef GS_SRV_AUDIT_H
#define GS_SRV_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum audit_err {
    AUDIT_OK = 0,
    AUDIT_ERR_NOMEM,
    AUDIT_ERR_ARGS,
    AUDIT_ERR_IO,       /* open/write/fdatasync failed: the caller must fail closed */
    AUDIT_ERR_FORMAT,   /* verify: a line is not JSON, too long, or lacks "prev" */
    AUDIT_ERR_CHAIN,    /* verify: a line's "prev" does not match the previous line */
    AUDIT_ERR_MISSING,  /* verify: the earlier file a rotated log names is not there */
    AUDIT_ERR_TORN,     /* verify: every complete line verifies, but the file ends in an
                           unterminated one (an interrupted write, not tampering) */
    AUDIT_ERR_NOT_IN_CHAIN, /* verify --since: the file to start at is not one the chain passes */
    AUDIT_ERR_UNREPLICATED, /* audit_wait_durable: the records are in the audit table, but on the
                               PostgreSQL primary alone, refused by [db] unreplicated_writes = refuse */
} audit_err;

const char *audit_strerror(audit_err err);

typedef struct audit_log audit_log;

/* Opens (creating, mode 0600) path for appending and reads the last line to
 * continue the chain. A file that ends in an unterminated line (a write cut
 * short by a crash or a full disk) is cut back to its last complete record
 * (logged, and told by audit_torn_bytes_cut), NUL bytes a crash left
 * after it cut too, however many; one whose unterminated tail (without
 * those) is longer than any record is refused (AUDIT_ERR_FORMAT). A FIFO,
 * device or directory at path is refused unopened (AUDIT_ERR_IO, errno
 * EINVAL or EISDIR). A record is in the file whole or not at all:
 * a short write is cut back before anything else is written. A symbolic
 * link at path is refused (AUDIT_ERR_IO, errno ELOOP). On AUDIT_ERR_IO
 * errno says why. */
audit_err audit_open(const char *path, audit_log **out);
/* Why audit_open(path) failed with AUDIT_ERR_IO and errno err, in words
 * for the operator, written to buf (always terminated): a link or a FIFO
 * refused by design, an append-only or immutable attribute, and for
 * EACCES whose the file (or, not there yet, its directory) is, its mode
 * and who asked: a log left behind by root refuses a command run as the
 * server's user, and "Permission denied" alone does not say so. Else
 * strerror(err). */
void audit_open_why(const char *path, int err, char *buf, size_t cap);
/* How many bytes of a torn tail audit_open cut off (0: none), for a
 * command to say so (`audit rotate`); serve logs it. */
long long audit_torn_bytes_cut(const audit_log *log);

/* [audit] store = db: the same records as rows of the database's audit
 * table (gs_store_audit_*), one hash chain per instance. Each line also
 * carries "instance" and "seq" (its row), and "prev" chains it to the
 * previous row of the same instance. A sync round inserts the queued
 * records in one statement committed with synchronous commit (the group
 * commit of the file form). A failed round fails exactly its records
 * (their answers are refused) and reloads the chain head from the table,
 * so the chain stays whole; the store reconnects at the next round.
 * AUDIT_ERR_IO when the database cannot be opened now. */
audit_err audit_open_db(const char *db_location, const char *instance, audit_log **out);
void audit_close(audit_log *log);

/* How long a round waits for the file's flock held by another process
 * (a CLI append, `audit rotate`) before it fails its records; 5000 ms
 * unless set. */
void audit_set_lock_wait(audit_log *log, unsigned ms);

/* Re-checks that the file can still be written (used by /healthz and before
 * sensitive operations): AUDIT_ERR_IO when the file is no longer at its
 * path, when there is no room for another record (fdatasync succeeds on a
 * full disk: room for one is reserved past the end of the file instead),
 * or when the last append or sync failed and a new sync round still fails.
 * Cheap when all is well (no fdatasync). */
audit_err audit_check(audit_log *log);

/* When the file at the path is no longer the one open and is not its
 * rotation's successor (deleted and made anew, moved away): opens the one
 * at the path and continues its chain (a new file starts a new one). For
 * SIGHUP. AUDIT_OK when nothing had to be done too. */
audit_err audit_reopen(audit_log *log);

/* One record. Strings are copied into the JSON; NULL fields are omitted.
 * key_version < 0 is omitted. `extra` (may be NULL) is a jansson object
 * (json_t *) whose members are added (borrowed). */
typedef struct audit_record {
    const char *request_id;
    const char *action;      /* "unwrap", "rewrap", "secret-keys", "member-add", "certify", ... */
    const char *identity;    /* an identity, or "anonymous member" */
    const char *group;
    long key_version;
    const char *method;      /* "tls", "recipient-key", "group-secret", "members", ... */
    const char *outcome;     /* "ok", "unwrap_failed", "not_a_member", ... */
    void *extra;
} audit_record;

/* Appends and syncs one line (queues it and runs or waits for the round
 * that writes and syncs it); thread-safe. AUDIT_ERR_IO if it was not
 * durably written: the write failed (the chain head is then unchanged) or
 * the fdatasync covering it failed (the line may be in the file, and the
 * chain continues from it, so `audit verify` still passes). audit_close
 * writes what is still queued. */
audit_err audit_append(audit_log *log, const audit_record *rec);

/* A change that is made before its outcome can be recorded (a member
 * change committed to the database, a group's keys made on the token)
 * is first recorded with outcome AUDIT_STARTED, durable before anything
 * is changed: a process killed between the change and its outcome record
 * (kill -9, a crash, a power loss) then leaves a "started" without its
 * outcome, never a change without a record. audit_started writes rec as
 * that record (its outcome "started" and no key version; action,
 * identity, group and extra as the caller gives them: what the outcome's
 * record will name) and returns once it is durable, as audit_append:
 * anything but AUDIT_OK and nothing may be changed. Shared by the key
 * holder (REST member changes, POST /v1/groups) and the admin commands
 * (member add|set|remove, group create). */
#define AUDIT_STARTED "started"
audit_err audit_started(audit_log *log, const audit_record *rec);

/* The extra of a member removal's record (`member-remove`, over REST and
 * on the command line): the member as stored and the versions it rotated
 * to (0: none), with "rotate_elsewhere": true where nothing rotated
 * because the origin makes the group's versions (a clone), so that an
 * auditor reading 0 and 0 knows the origin has to rotate. A new jansson
 * object (json_t *) the caller owns; NULL when out of memory. */
void *audit_removal_detail(const char *member, unsigned secret_version, unsigned key_version,
                           bool rotate_elsewhere);

/* audit_append in two halves, for callers that must not block in
 * fdatasync (the key holder's token workers). audit_write queues the
 * record (no file access; AUDIT_ERR_NOMEM, also for a string that is
 * not UTF-8, or AUDIT_ERR_ARGS, also for a record over 1 MiB) and
 * returns its sequence number (numbers grow in file order). The records
 * first..last of one request are durable once audit_range_state is 1;
 * -1: one of them could not be written (the file not at its path, a full
 * disk, a record too long) or a failed fdatasync covered it (treat as
 * AUDIT_ERR_IO: fail closed); 0: not yet. audit_seq_state is the same for
 * one record. audit_wait_durable blocks until it is known, running a round
 * itself if no one else is: AUDIT_ERR_IO when one failed, or
 * AUDIT_ERR_UNREPLICATED when every failed round that covered them made
 * its rows on the primary alone (in the table, refused: [db]
 * unreplicated_writes = refuse). */
audit_err audit_write(audit_log *log, const audit_record *rec, unsigned long long *seq);
int audit_range_state(audit_log *log, unsigned long long first, unsigned long long last);
int audit_seq_state(audit_log *log, unsigned long long seq);
audit_err audit_wait_durable(audit_log *log, unsigned long long first, unsigned long long last);

/* Seals the log and continues its chain in a new file (`groupsrv audit
 * rotate`): links the file to ARCHIVE = PATH.YYYYmmddTHHMMSSZ, appends an
 * "audit-rotate" record naming it, and puts at PATH a new file (mode 0600,
 * same owner) whose first record, "audit-continue", names ARCHIVE and
 * chains to the seal. Everything is synced before it returns. Appenders in
 * other processes (a running server) hold flock(2) while they write, so the
 * seal is the archive's last line; they continue in the new file at their
 * next write or audit_check. archive (cap bytes) receives ARCHIVE's path.
 * AUDIT_ERR_FORMAT: the last line is no record (audit_open cuts off a torn
 * one, so only a line longer than any record); AUDIT_ERR_IO:
 * nothing was rotated, or (seal written, new file not in place) records go
 * on after the seal in the same file. */
audit_err audit_rotate(audit_log *log, char *archive, size_t cap);

/* Verifies a whole file. On return *lines is the number of good lines and
 * *bad_line the 1-based line number of the first problem (0 if none);
 * head_hex (65 bytes, may be NULL) receives the hash of the last line. */
audit_err audit_verify_file(const char *path, size_t *lines, size_t *bad_line, char *head_hex);

/* Verifies a rotated log: path and, following each file's "audit-continue"
 * record back to its "previous" file (in the same directory), every file
 * before it, oldest first, the chain carried across files. follow = 0:
 * path alone, its first line's "prev" taken as given. AUDIT_ERR_MISSING:
 * bad_file, named by the chain, is not there, and the files after it are
 * intact (lines counts theirs; a broken one is reported instead). */
#define AUDIT_MAX_FILES 100000
typedef struct audit_verify_result {
    size_t files;         /* files checked */
    size_t lines;         /* good lines in them */
    size_t bad_line;      /* 1-based line of the problem in bad_file; 0 if none or the file is missing */
    char bad_file[4096];  /* the file with the problem, or the missing one */
    char head[65];        /* hex hash of the last good line */
    char start[65];       /* the first line's "prev" taken as given ("" when none was) */
} audit_verify_result;
audit_err audit_verify_chain(const char *path, int follow, audit_verify_result *res);

/* As audit_verify_chain, but the walk back stops at since (the same file,
 * by device and inode, reached along the "previous" names from path):
 * since's first line's "prev" is taken as given and returned in res->start
 * for the caller to compare with the hash it recorded before the older
 * files were moved away. Files older than since are not looked at; a
 * missing file between since and path is still AUDIT_ERR_MISSING.
 * AUDIT_ERR_NOT_IN_CHAIN: the walk reached the chain's start without
 * passing since (res->bad_file: since); AUDIT_ERR_IO: since cannot be
 * looked at. */
audit_err audit_verify_chain_since(const char *path, const char *since, audit_verify_result *res);

/* Verifies every instance's chain in the database's audit table, writing
 * one line per instance (and one per gap or broken record) to report.
 * AUDIT_OK when all are whole; AUDIT_ERR_CHAIN for a gap or broken link,
 * AUDIT_ERR_FORMAT for an unreadable record, AUDIT_ERR_IO when the
 * database cannot be read (nothing written to report; gs_err_detail()
 * says why). *instances: how many chains were checked. */
audit_err audit_verify_db(const char *db_location, FILE *report, size_t *instances);

#endif
