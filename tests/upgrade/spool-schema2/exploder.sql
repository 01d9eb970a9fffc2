-- exploder spool schema 2, written by the exploder at commit ecb758a (tests/upgrade/make-fixtures.sh)
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE lists( id INTEGER PRIMARY KEY, address TEXT NOT NULL UNIQUE COLLATE NOCASE, server TEXT NOT NULL, grp TEXT NOT NULL, mode TEXT NOT NULL CHECK(mode IN ('forward','group-secret','member-certs')), cert TEXT, key TEXT, cacert TEXT, group_cert TEXT, require_encrypted INTEGER NOT NULL DEFAULT 1, members_only INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL, key_transports TEXT, group_methods TEXT, group_info_at INTEGER NOT NULL DEFAULT 0, group_info_tried INTEGER NOT NULL DEFAULT 0);
INSERT INTO lists VALUES(1,'fwd@lists.example.org','https://127.0.0.1:9','eng','forward',NULL,NULL,NULL,NULL,0,0,1796496443,NULL,NULL,0,1796496443);
CREATE TABLE members( list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE, address TEXT NOT NULL COLLATE NOCASE, added INTEGER NOT NULL, PRIMARY KEY(list_id, address));
INSERT INTO members VALUES(1,'alice@example.org',1796496443);
INSERT INTO members VALUES(1,'bob@example.org',1796496443);
CREATE TABLE messages( id INTEGER PRIMARY KEY, list_id INTEGER REFERENCES lists(id), kind INTEGER NOT NULL, sender TEXT NOT NULL, message_id TEXT NOT NULL DEFAULT '', file TEXT NOT NULL, out_file TEXT, state INTEGER NOT NULL, received INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL, last_error TEXT, reason TEXT);
INSERT INTO messages VALUES(1,1,0,'carol@example.org','<q1@example.org>','02b7efb023c48842269a45ae.in','02b7efb023c48842269a45ae.out',1,1796496443,0,1796496443,NULL,NULL);
CREATE TABLE recipients( id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE, address TEXT NOT NULL, state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL, last_error TEXT, ri BLOB);
INSERT INTO recipients VALUES(1,1,'alice@example.org',0,1,1796496503,'Failed to connect to 127.0.0.1 port 9 after 0 ms: Couldn''t connect to server (waiting for the greeting)',NULL);
INSERT INTO recipients VALUES(2,1,'bob@example.org',0,1,1796496503,'Failed to connect to 127.0.0.1 port 9 after 0 ms: Couldn''t connect to server (waiting for the greeting)',NULL);
CREATE INDEX recipients_due ON recipients(state, next_attempt, message_id);
CREATE INDEX recipients_msg ON recipients(message_id, state);
CREATE INDEX messages_state ON messages(state, next_attempt);
COMMIT;
PRAGMA user_version = 2;
