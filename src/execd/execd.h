/* moat execd: the testable pieces of moat-execd, the in-sandbox daemon that speaks
 * OpenSandbox execd's HTTP + SSE API. Everything here is pure (no I/O except the upload
 * assembler, which writes part bodies to temporary files it owns). */
#ifndef MOAT_EXECD_H
#define MOAT_EXECD_H

#include "common/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- SSE event writer ------------------------------------------------------------------ */

/* Appends `s[0..len)` as a JSON string literal (with quotes) escaped the way Go's
 * encoding/json does: \" \\ \n \r \t, other control bytes as \u00XX, '<' '>' '&' as
 * \u003c \u003e \u0026, U+2028/U+2029 as \u2028/\u2029 (so line-splitting clients never
 * cut an event), and every invalid UTF-8 byte as \ufffd. MOAT_E_TOO_BIG past out->max. */
moat_err moat_execd_json_string(moat_buf *out, const char *s, size_t len);

/* One event of the reference's stream (`{json}\n\n`). Fields that are zero/NULL are left
 * out, as Go's omitempty does; timestamp is always written. The pointers are borrowed for
 * the call only. */
typedef struct moat_execd_event {
    const char *type;        /* "init", "stdout", "error", … (required) */
    const char *text;        /* may be NULL */
    size_t text_len;         /* bytes of text (need not be NUL-terminated) */
    int64_t execution_count; /* 0 = omitted */
    int64_t execution_time;  /* ms; 0 = omitted */
    const char *error_ename; /* non-NULL: writes "error":{ename,evalue,traceback} */
    const char *error_evalue;
    const char *error_traceback; /* one traceback line; NULL writes "traceback":null */
    const char *error_cause;     /* moat's extension: "timeout" when the run's timeout killed
                                  * it; NULL = omitted */
    int64_t timestamp;           /* Unix ms */
} moat_execd_event;

/* Appends the event's bytes to out. */
moat_err moat_execd_sse_event(moat_buf *out, const moat_execd_event *ev);

/* Binary-safe output event (contract): `{"type":"<stream>","timestamp":T,"len":N}\n` +
 * N raw bytes + "\n\n". N must be 1..MOAT_EXECD_BINARY_CHUNK_MAX, else MOAT_E_INVAL. */
#define MOAT_EXECD_BINARY_CHUNK_MAX 65536
/* Longest header line moat_execd_sse_binary_header writes. */
#define MOAT_EXECD_BINARY_HEADER_MAX 128
moat_err moat_execd_sse_binary(moat_buf *out, const char *stream, int64_t timestamp,
                               const void *data, size_t len);

/* Just the header line of a binary output event (for callers that place the bytes
 * themselves). Returns its length, or 0 if len or stream is invalid. */
size_t moat_execd_sse_binary_header(char out[MOAT_EXECD_BINARY_HEADER_MAX], const char *stream,
                                    int64_t timestamp, size_t len);

/* ---- Line splitter ---------------------------------------------------------------------- */

typedef enum moat_execd_line_mode {
    /* POST /command: every \n or \r ends a line; a non-empty line is emitted without its
     * terminator; an empty line is emitted as "\n"; the \n of a \r\n pair emits nothing. */
    MOAT_EXECD_LINES_COMMAND = 0,
    /* /session/{id}/run: lines end at \n, a \r before it is dropped, empty lines are not
     * emitted (bufio.Scanner + "empty text is never emitted"). */
    MOAT_EXECD_LINES_SESSION = 1,
} moat_execd_line_mode;

/* Called for each complete line; `line` is valid only during the call. A non-OK return
 * stops the feed and is returned by it. */
typedef moat_err (*moat_execd_line_cb)(void *ud, const char *line, size_t len);

typedef struct moat_execd_lines {
    moat_execd_line_mode mode;
    moat_buf partial; /* bytes of the line not yet terminated */
    bool prev_cr;     /* the last byte seen was \r (for the \r\n pair across feeds) */
    size_t max_line;
} moat_execd_lines;

/* A line longer than max_line is emitted in pieces of at most max_line bytes, cut on a
 * UTF-8 character boundary. The splitter owns its partial buffer: free with _free. */
void moat_execd_lines_init(moat_execd_lines *ls, moat_execd_line_mode mode, size_t max_line);
void moat_execd_lines_free(moat_execd_lines *ls);
moat_err moat_execd_lines_feed(moat_execd_lines *ls, const void *data, size_t len,
                               moat_execd_line_cb cb, void *ud);
/* End of stream: emits a final line that had no terminator. */
moat_err moat_execd_lines_finish(moat_execd_lines *ls, moat_execd_line_cb cb, void *ud);

/* ---- Path expansion --------------------------------------------------------------------- */

/* Returns the value of an environment variable or NULL when it is not defined. */
typedef const char *(*moat_execd_env_lookup)(void *ud, const char *name);

/* Expands $VAR, ${VAR} and a leading "~" or "~/" (home) like OpenSandbox execd. A '$' not
 * followed by a name or '{' stays literal. An undefined variable or an unterminated "${"
 * is MOAT_E_NOT_FOUND / MOAT_E_INVAL with the variable or reason in errbuf. On success
 * *out is a malloc'd string the caller frees. Results longer than 4096 bytes are
 * MOAT_E_TOO_BIG. */
moat_err moat_execd_expand_path(const char *in, const char *home, moat_execd_env_lookup lookup,
                                void *ud, char **out, char *errbuf, size_t errlen);

/* ---- Range header ----------------------------------------------------------------------- */

/* Parses the first range of a "bytes=…" Range header against a file of `size` bytes into
 * an inclusive [*start, *end]. MOAT_E_INVAL for malformed or unsatisfiable ranges (the
 * caller answers 416). */
moat_err moat_execd_parse_range(const char *header, uint64_t size, uint64_t *start, uint64_t *end);

/* ---- Line window (GET /files/download?offset=&limit=) ----------------------------------- */

/* Newer execd (and its SDKs) read a file by lines: `offset` is the first line (1-based),
 * `limit` the number of lines, both required together. Parses the two query values
 * (either may be NULL, meaning absent). MOAT_E_NOT_FOUND when both are absent (a plain
 * download); MOAT_E_INVAL, with the reason in errbuf, when only one is given or either is
 * not a positive decimal integer. */
moat_err moat_execd_parse_line_window(const char *offset, const char *limit, uint64_t *first,
                                      uint64_t *count, char *errbuf, size_t errlen);

/* Selects lines [first, first + count) of a byte stream fed in pieces of any size. A line
 * ends after its '\n'; a last line without one is still a line. */
typedef struct moat_execd_line_window {
    uint64_t first, end; /* 1-based; end = first + count, saturated */
    uint64_t line;       /* the line the next byte belongs to */
} moat_execd_line_window;

void moat_execd_line_window_init(moat_execd_line_window *w, uint64_t first, uint64_t count);

/* Scans in[0..len): the bytes of it inside the window are in[*keep_off, *keep_off +
 * *keep_len) (one run, since the window is one run of lines). Returns true once the window
 * is complete: nothing after it is needed, and bytes past it were not scanned. */
bool moat_execd_line_window_feed(moat_execd_line_window *w, const uint8_t *in, size_t len,
                                 size_t *keep_off, size_t *keep_len);

/* ---- Upload assembler ------------------------------------------------------------------- */

/* Gathers the parts of a POST /files/upload body (as a multipart parser such as
 * MHD_PostProcessor delivers them: name, filename and data pieces with their offset within
 * the part) into metadata/file pairs. Metadata parts are kept in memory (at most meta_max
 * bytes each); file parts are streamed to temporary files in tmpdir, which the assembler
 * owns and removes in _free unless taken. */
typedef struct moat_execd_upload moat_execd_upload;

typedef enum moat_execd_upload_error {
    MOAT_EXECD_UPLOAD_OK = 0,
    MOAT_EXECD_UPLOAD_INVALID_FILE,          /* counts of metadata and file parts differ */
    MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA, /* metadata missing, too large or not valid */
    MOAT_EXECD_UPLOAD_INVALID_FILE_CONTENT,  /* no file part at all */
    MOAT_EXECD_UPLOAD_RUNTIME_ERROR,         /* I/O failure writing a part */
} moat_execd_upload_error;

typedef struct moat_execd_upload_pair {
    char *path;          /* metadata "path", not yet expanded */
    char *owner, *group; /* NULL when absent or JSON null */
    uint32_t mode;       /* permission bits from octal-as-decimal digits; 0 = default */
    char *tmp_path;      /* the temporary file holding the body */
    uint64_t size;
} moat_execd_upload_pair;

/* NULL on allocation failure. max_parts bounds the number of parts of each kind. */
moat_execd_upload *moat_execd_upload_new(const char *tmpdir, size_t meta_max, size_t max_parts);
/* One piece of a part. A new name/filename, or off == 0 after the current part has
 * received bytes, starts a new part (so an empty piece at 0 followed by data at 0 is one
 * part, as MHD delivers them; two consecutive empty parts of the same name merge).
 * Parts named neither "metadata" nor "file" are ignored. On error the upload is failed:
 * later calls return the same error. */
moat_execd_upload_error moat_execd_upload_part(moat_execd_upload *u, const char *name,
                                               const char *filename, uint64_t off, const void *data,
                                               size_t len);
/* Validates the pairs once the body is complete. The message (static or in u) explains an
 * error; it lives as long as u. */
moat_execd_upload_error moat_execd_upload_finish(moat_execd_upload *u, const char **message);
size_t moat_execd_upload_count(const moat_execd_upload *u);
/* Valid after a successful finish, i < count; owned by u. Clearing tmp_path in the
 * returned pair (after renaming the file away) keeps _free from removing it. */
moat_execd_upload_pair *moat_execd_upload_get(moat_execd_upload *u, size_t i);
/* Removes the temporary files not taken and frees everything. NULL is fine. */
void moat_execd_upload_free(moat_execd_upload *u);

/* Parses octal digits written as a decimal number (755 → 0755). MOAT_E_INVAL for a digit 8
 * or 9 or a value over 7777. */
moat_err moat_execd_mode_from_decimal(int64_t dec, uint32_t *mode);
/* The reverse: 0755 → 755. */
int64_t moat_execd_mode_to_decimal(uint32_t mode);

/* ---- Session environment dump ----------------------------------------------------------- */

/* Parses the NUL-separated "NAME=value" records a session run's exit trap writes. Calls cb
 * for each valid record (name: [A-Za-z_][A-Za-z0-9_]*). The special record "\1PWD=<dir>"
 * reports the working directory through pwd_cb. Records without '=' are skipped. */
typedef void (*moat_execd_env_cb)(void *ud, const char *name, size_t name_len, const char *value,
                                  size_t value_len);
void moat_execd_parse_env_dump(const char *data, size_t len, moat_execd_env_cb cb,
                               moat_execd_env_cb pwd_cb, void *ud);

#ifdef __cplusplus
}
#endif
#endif
