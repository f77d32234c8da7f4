/* The durable session store: one SQLite connection in WAL mode with synchronous=FULL, so a
 * renew is on disk before it is acknowledged. Serialised by a mutex. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "internal.h"

struct moat__store {
    sqlite3 *db;
    pthread_mutex_t mu;
};

static const char *const SCHEMA = "CREATE TABLE IF NOT EXISTS sessions ("
                                  " session_id TEXT PRIMARY KEY,"
                                  " chat_id TEXT NOT NULL,"
                                  " container_id TEXT NOT NULL,"
                                  " image TEXT NOT NULL DEFAULT '',"
                                  " created_at_ms INTEGER NOT NULL,"
                                  " label_expires_at_ms INTEGER NOT NULL,"
                                  " expires_at_ms INTEGER NOT NULL,"
                                  " renewed INTEGER NOT NULL DEFAULT 0,"
                                  " state INTEGER NOT NULL,"
                                  " claimed INTEGER NOT NULL DEFAULT 0,"
                                  " reason TEXT NOT NULL DEFAULT '',"
                                  " ended_at_ms INTEGER NOT NULL DEFAULT 0,"
                                  " execd_token TEXT NOT NULL DEFAULT '');";
/* Stores made before the column existed get it; their sessions keep an empty token. */
static const char *const ADD_TOKEN_COLUMN =
    "ALTER TABLE sessions ADD COLUMN execd_token TEXT NOT NULL DEFAULT ''";

static const char *const COLUMNS =
    "session_id, chat_id, container_id, image, created_at_ms, label_expires_at_ms, "
    "expires_at_ms, renewed, state, claimed, reason, ended_at_ms, execd_token";

static void copy_text(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

static void read_row(sqlite3_stmt *s, moat__row *row)
{
    memset(row, 0, sizeof(*row));
    copy_text(row->session_id, sizeof(row->session_id), sqlite3_column_text(s, 0));
    copy_text(row->chat_id, sizeof(row->chat_id), sqlite3_column_text(s, 1));
    copy_text(row->container_id, sizeof(row->container_id), sqlite3_column_text(s, 2));
    copy_text(row->image, sizeof(row->image), sqlite3_column_text(s, 3));
    row->created_at_ms = sqlite3_column_int64(s, 4);
    row->label_expires_at_ms = sqlite3_column_int64(s, 5);
    row->expires_at_ms = sqlite3_column_int64(s, 6);
    row->renewed = sqlite3_column_int(s, 7) != 0;
    row->state = (moat_session_state)sqlite3_column_int(s, 8);
    row->claimed = sqlite3_column_int(s, 9) != 0;
    copy_text(row->reason, sizeof(row->reason), sqlite3_column_text(s, 10));
    row->ended_at_ms = sqlite3_column_int64(s, 11);
    copy_text(row->execd_token, sizeof(row->execd_token), sqlite3_column_text(s, 12));
}

static void bind_row(sqlite3_stmt *s, const moat__row *row)
{
    sqlite3_bind_text(s, 1, row->session_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, row->chat_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, row->container_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 4, row->image, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 5, row->created_at_ms);
    sqlite3_bind_int64(s, 6, row->label_expires_at_ms);
    sqlite3_bind_int64(s, 7, row->expires_at_ms);
    sqlite3_bind_int(s, 8, row->renewed ? 1 : 0);
    sqlite3_bind_int(s, 9, (int)row->state);
    sqlite3_bind_int(s, 10, row->claimed ? 1 : 0);
    sqlite3_bind_text(s, 11, row->reason, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 12, row->ended_at_ms);
    sqlite3_bind_text(s, 13, row->execd_token, -1, SQLITE_TRANSIENT);
}

moat_err moat__store_open(const char *path, moat__store **out, char *errbuf, size_t errlen)
{
    moat__store *store = calloc(1, sizeof(*store));
    if (store == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        return MOAT_E_NOMEM;
    }
    int rc = sqlite3_open_v2(
        path, &store->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    char *err = NULL;
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(store->db, 5000);
        rc = sqlite3_exec(store->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL,
                          NULL, &err);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(store->db, SCHEMA, NULL, NULL, &err);
    if (rc == SQLITE_OK &&
        sqlite3_exec(store->db, ADD_TOKEN_COLUMN, NULL, NULL, NULL) != SQLITE_OK &&
        strstr(sqlite3_errmsg(store->db), "duplicate column") == NULL) {
        rc = SQLITE_ERROR;
    }
    if (rc != SQLITE_OK) {
        snprintf(errbuf, errlen, "%s", err ? err : sqlite3_errmsg(store->db));
        sqlite3_free(err);
        sqlite3_close(store->db);
        free(store);
        return MOAT_E_IO;
    }
    pthread_mutex_init(&store->mu, NULL);
    *out = store;
    return MOAT_OK;
}

void moat__store_close(moat__store *store)
{
    if (store == NULL)
        return;
    sqlite3_close(store->db);
    pthread_mutex_destroy(&store->mu);
    free(store);
}

/* Runs one statement (binding with bind_fn), returning the changed-row count. */
static moat_err exec_stmt(moat__store *store, const char *sql, const moat__row *row,
                          void (*bind_fn)(sqlite3_stmt *, const void *), const void *arg,
                          int *changes)
{
    sqlite3_stmt *s = NULL;
    moat_err err = MOAT_OK;
    pthread_mutex_lock(&store->mu);
    if (sqlite3_prepare_v2(store->db, sql, -1, &s, NULL) != SQLITE_OK) {
        err = MOAT_E_IO;
        goto out;
    }
    if (row != NULL)
        bind_row(s, row);
    if (bind_fn != NULL)
        bind_fn(s, arg);
    if (sqlite3_step(s) != SQLITE_DONE) {
        moat_log(MOAT_LOG_ERROR, "runtime_store_error", "error=\"%s\"", sqlite3_errmsg(store->db));
        err = MOAT_E_IO;
        goto out;
    }
    if (changes != NULL)
        *changes = sqlite3_changes(store->db);
out:
    sqlite3_finalize(s);
    pthread_mutex_unlock(&store->mu);
    return err;
}

moat_err moat__store_put(moat__store *store, const moat__row *row)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "INSERT OR REPLACE INTO sessions (%s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", COLUMNS);
    return exec_stmt(store, sql, row, NULL, NULL, NULL);
}

moat_err moat__store_insert_new(moat__store *store, const moat__row *row, bool *inserted)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "INSERT OR IGNORE INTO sessions (%s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", COLUMNS);
    int changes = 0;
    moat_err err = exec_stmt(store, sql, row, NULL, NULL, &changes);
    *inserted = changes > 0;
    return err;
}

moat_err moat__store_get(moat__store *store, const char *session_id, moat__row *row)
{
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT %s FROM sessions WHERE session_id = ?", COLUMNS);
    sqlite3_stmt *s = NULL;
    moat_err err = MOAT_OK;
    pthread_mutex_lock(&store->mu);
    if (sqlite3_prepare_v2(store->db, sql, -1, &s, NULL) != SQLITE_OK) {
        err = MOAT_E_IO;
        goto out;
    }
    sqlite3_bind_text(s, 1, session_id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        read_row(s, row);
    else
        err = rc == SQLITE_DONE ? MOAT_E_NOT_FOUND : MOAT_E_IO;
out:
    sqlite3_finalize(s);
    pthread_mutex_unlock(&store->mu);
    return err;
}

bool moat__store_has(moat__store *store, const char *session_id)
{
    moat__row row;
    return moat__store_get(store, session_id, &row) != MOAT_E_NOT_FOUND;
}

struct renew_args {
    const char *session_id;
    int64_t expires_at_ms;
};

static void bind_renew(sqlite3_stmt *s, const void *arg)
{
    const struct renew_args *a = arg;
    sqlite3_bind_int64(s, 1, a->expires_at_ms);
    sqlite3_bind_text(s, 2, a->session_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 3, MOAT_SESSION_RUNNING);
}

moat_err moat__store_renew(moat__store *store, const char *session_id, int64_t expires_at_ms)
{
    struct renew_args a = {session_id, expires_at_ms};
    int changes = 0;
    moat_err err = exec_stmt(store,
                             "UPDATE sessions SET expires_at_ms = ?, renewed = 1 "
                             "WHERE session_id = ? AND state = ? AND claimed = 0",
                             NULL, bind_renew, &a, &changes);
    if (err != MOAT_OK || changes > 0)
        return err;
    moat__row row;
    err = moat__store_get(store, session_id, &row);
    return err == MOAT_OK ? MOAT_E_STATE : err;
}

static void bind_claim(sqlite3_stmt *s, const void *arg)
{
    const struct renew_args *a = arg;
    sqlite3_bind_text(s, 1, a->session_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 2, MOAT_SESSION_RUNNING);
    sqlite3_bind_int64(s, 3, a->expires_at_ms);
}

moat_err moat__store_claim_expired(moat__store *store, const char *session_id, int64_t now_ms,
                                   bool *claimed)
{
    struct renew_args a = {session_id, now_ms};
    int changes = 0;
    moat_err err = exec_stmt(store,
                             "UPDATE sessions SET claimed = 1 WHERE session_id = ? AND state = ? "
                             "AND claimed = 0 AND expires_at_ms <= ?",
                             NULL, bind_claim, &a, &changes);
    *claimed = err == MOAT_OK && changes > 0;
    return err;
}

static void bind_id(sqlite3_stmt *s, const void *arg)
{
    sqlite3_bind_text(s, 1, arg, -1, SQLITE_TRANSIENT);
}

moat_err moat__store_unclaim(moat__store *store, const char *session_id)
{
    return exec_stmt(store, "UPDATE sessions SET claimed = 0 WHERE session_id = ?", NULL, bind_id,
                     session_id, NULL);
}

struct finish_args {
    const char *session_id;
    moat_session_state state;
    const char *reason;
    int64_t now_ms;
};

static void bind_finish(sqlite3_stmt *s, const void *arg)
{
    const struct finish_args *a = arg;
    sqlite3_bind_int(s, 1, (int)a->state);
    sqlite3_bind_text(s, 2, a->reason ? a->reason : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, a->now_ms);
    sqlite3_bind_text(s, 4, a->session_id, -1, SQLITE_TRANSIENT);
}

moat_err moat__store_finish(moat__store *store, const char *session_id, moat_session_state state,
                            const char *reason, int64_t now_ms)
{
    struct finish_args a = {session_id, state, reason, now_ms};
    return exec_stmt(store,
                     "UPDATE sessions SET state = ?, reason = ?, ended_at_ms = ?, claimed = 0 "
                     "WHERE session_id = ?",
                     NULL, bind_finish, &a, NULL);
}

moat_err moat__store_list_running(moat__store *store, moat__row **rows, size_t *count)
{
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT %s FROM sessions WHERE state = %d", COLUMNS,
             (int)MOAT_SESSION_RUNNING);
    *rows = NULL;
    *count = 0;
    sqlite3_stmt *s = NULL;
    moat_err err = MOAT_OK;
    size_t cap = 0;
    pthread_mutex_lock(&store->mu);
    if (sqlite3_prepare_v2(store->db, sql, -1, &s, NULL) != SQLITE_OK) {
        err = MOAT_E_IO;
        goto out;
    }
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (*count == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            moat__row *n = realloc(*rows, ncap * sizeof(**rows));
            if (n == NULL) {
                err = MOAT_E_NOMEM;
                goto out;
            }
            *rows = n;
            cap = ncap;
        }
        read_row(s, &(*rows)[(*count)++]);
    }
    if (rc != SQLITE_DONE)
        err = MOAT_E_IO;
out:
    sqlite3_finalize(s);
    pthread_mutex_unlock(&store->mu);
    if (err != MOAT_OK) {
        free(*rows);
        *rows = NULL;
        *count = 0;
    }
    return err;
}
