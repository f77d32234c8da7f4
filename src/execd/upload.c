/* Upload assembler: turns multipart parts into metadata/file pairs with bounded memory. */
#include "execd/execd.h"

#include "execd_json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum part_kind { PART_NONE, PART_META, PART_FILE, PART_IGNORED } part_kind;

typedef struct file_part {
    char *tmp_path;
    uint64_t size;
} file_part;

struct moat_execd_upload {
    char *tmpdir;
    size_t meta_max, max_parts;
    moat_execd_upload_error failed;
    char message[256];
    /* current part */
    part_kind kind;
    char *cur_name, *cur_filename;
    uint64_t expect_off;
    int fd;
    moat_buf meta_cur;
    /* collected */
    moat_buf *metas;
    size_t n_meta;
    file_part *files;
    size_t n_file;
    moat_execd_upload_pair *pairs;
    size_t n_pairs;
};

moat_execd_upload *moat_execd_upload_new(const char *tmpdir, size_t meta_max, size_t max_parts)
{
    moat_execd_upload *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->tmpdir = strdup(tmpdir);
    u->metas = calloc(max_parts, sizeof(*u->metas));
    u->files = calloc(max_parts, sizeof(*u->files));
    if (u->tmpdir == NULL || u->metas == NULL || u->files == NULL) {
        moat_execd_upload_free(u);
        return NULL;
    }
    u->meta_max = meta_max;
    u->max_parts = max_parts;
    u->fd = -1;
    moat_buf_init(&u->meta_cur, meta_max);
    return u;
}

static moat_execd_upload_error fail(moat_execd_upload *u, moat_execd_upload_error e,
                                    const char *msg)
{
    if (u->failed == MOAT_EXECD_UPLOAD_OK) {
        u->failed = e;
        snprintf(u->message, sizeof(u->message), "%s", msg);
    }
    return u->failed;
}

static bool same(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Ends the current part, moving its content into the collected lists. */
static moat_execd_upload_error close_part(moat_execd_upload *u)
{
    if (u->kind == PART_META) {
        u->metas[u->n_meta++] = u->meta_cur;
        moat_buf_init(&u->meta_cur, u->meta_max);
    } else if (u->kind == PART_FILE) {
        if (u->fd >= 0 && close(u->fd) != 0) {
            u->fd = -1;
            return fail(u, MOAT_EXECD_UPLOAD_RUNTIME_ERROR, "writing upload data failed");
        }
        u->fd = -1;
    }
    u->kind = PART_NONE;
    free(u->cur_name);
    free(u->cur_filename);
    u->cur_name = u->cur_filename = NULL;
    return MOAT_EXECD_UPLOAD_OK;
}

static moat_execd_upload_error open_part(moat_execd_upload *u, const char *name,
                                         const char *filename)
{
    u->cur_name = name ? strdup(name) : NULL;
    u->cur_filename = filename ? strdup(filename) : NULL;
    u->expect_off = 0;
    if (name != NULL && strcmp(name, "metadata") == 0) {
        if (u->n_meta >= u->max_parts)
            return fail(u, MOAT_EXECD_UPLOAD_INVALID_FILE, "too many metadata parts");
        u->kind = PART_META;
    } else if (name != NULL && strcmp(name, "file") == 0) {
        if (u->n_file >= u->max_parts)
            return fail(u, MOAT_EXECD_UPLOAD_INVALID_FILE, "too many file parts");
        size_t plen = strlen(u->tmpdir) + 32;
        char *path = malloc(plen);
        if (path == NULL)
            return fail(u, MOAT_EXECD_UPLOAD_RUNTIME_ERROR, "out of memory");
        snprintf(path, plen, "%s/upload-XXXXXX", u->tmpdir);
        int fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0) {
            free(path);
            return fail(u, MOAT_EXECD_UPLOAD_RUNTIME_ERROR, "cannot create upload temp file");
        }
        u->fd = fd;
        u->files[u->n_file].tmp_path = path;
        u->files[u->n_file].size = 0;
        u->n_file++;
        u->kind = PART_FILE;
    } else {
        u->kind = PART_IGNORED;
    }
    return MOAT_EXECD_UPLOAD_OK;
}

moat_execd_upload_error moat_execd_upload_part(moat_execd_upload *u, const char *name,
                                               const char *filename, uint64_t off, const void *data,
                                               size_t len)
{
    if (u->failed != MOAT_EXECD_UPLOAD_OK)
        return u->failed;
    bool same_part =
        u->kind != PART_NONE && same(name, u->cur_name) && same(filename, u->cur_filename);
    /* MHD announces a part with an empty piece at offset 0, then sends its data from
     * offset 0 again: a piece at 0 for a part that has no bytes yet continues it. */
    bool new_part = !same_part || (off == 0 && u->expect_off != 0);
    if (new_part) {
        if (close_part(u) != MOAT_EXECD_UPLOAD_OK || open_part(u, name, filename))
            return u->failed;
    }
    if (off != u->expect_off)
        return fail(u, MOAT_EXECD_UPLOAD_INVALID_FILE, "multipart pieces out of order");
    u->expect_off += len;
    if (len == 0)
        return MOAT_EXECD_UPLOAD_OK;
    if (u->kind == PART_META) {
        if (moat_buf_append(&u->meta_cur, data, len) != MOAT_OK)
            return fail(u, MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA, "metadata part too large");
    } else if (u->kind == PART_FILE) {
        const char *p = data;
        size_t left = len;
        while (left > 0) {
            ssize_t w = write(u->fd, p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return fail(u, MOAT_EXECD_UPLOAD_RUNTIME_ERROR, "writing upload data failed");
            p += w;
            left -= (size_t)w;
        }
        u->files[u->n_file - 1].size += len;
    }
    return MOAT_EXECD_UPLOAD_OK;
}

static char *opt_string(const cJSON *obj, const char *key, bool *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL || cJSON_IsNull(v))
        return NULL;
    if (!cJSON_IsString(v)) {
        *bad = true;
        return NULL;
    }
    char *copy = strdup(v->valuestring);
    if (copy == NULL)
        *bad = true;
    return copy;
}

moat_execd_upload_error moat_execd_upload_finish(moat_execd_upload *u, const char **message)
{
    *message = u->message;
    if (u->failed != MOAT_EXECD_UPLOAD_OK)
        return u->failed;
    if (close_part(u) != MOAT_EXECD_UPLOAD_OK)
        return u->failed;
    if (u->n_file == 0 && u->n_meta == 0)
        return fail(u, MOAT_EXECD_UPLOAD_INVALID_FILE_CONTENT, "no file part in the upload");
    if (u->n_file == 0)
        return fail(u, MOAT_EXECD_UPLOAD_INVALID_FILE_CONTENT, "no file part in the upload");
    if (u->n_meta != u->n_file) {
        snprintf(u->message, sizeof(u->message),
                 "metadata and file parts do not pair up: %zu metadata, %zu file", u->n_meta,
                 u->n_file);
        u->failed = MOAT_EXECD_UPLOAD_INVALID_FILE;
        return u->failed;
    }
    u->pairs = calloc(u->n_file, sizeof(*u->pairs));
    if (u->pairs == NULL)
        return fail(u, MOAT_EXECD_UPLOAD_RUNTIME_ERROR, "out of memory");
    for (size_t i = 0; i < u->n_file; i++) {
        moat_execd_upload_pair *p = &u->pairs[i];
        p->tmp_path = u->files[i].tmp_path;
        u->files[i].tmp_path = NULL;
        p->size = u->files[i].size;
        u->n_pairs = i + 1;
        const char *why;
        cJSON *meta =
            moat__execd_json_parse((const char *)u->metas[i].data, u->metas[i].len, true, &why);
        if (meta == NULL || !cJSON_IsObject(meta)) {
            cJSON_Delete(meta);
            snprintf(u->message, sizeof(u->message), "metadata %zu is not a JSON object", i);
            u->failed = MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA;
            return u->failed;
        }
        bool bad = false;
        size_t plen = 0;
        const char *path = moat_json_str(meta, "path", &plen);
        if (path != NULL && plen > 0)
            p->path = strdup(path);
        p->owner = opt_string(meta, "owner", &bad);
        p->group = opt_string(meta, "group", &bad);
        const cJSON *mode = cJSON_GetObjectItemCaseSensitive(meta, "mode");
        int64_t m = 0;
        if (mode != NULL && !cJSON_IsNull(mode) &&
            (!moat_json_int_value(mode, &m) ||
             moat_execd_mode_from_decimal(m, &p->mode) != MOAT_OK))
            bad = true;
        cJSON_Delete(meta);
        if (p->path == NULL || bad) {
            snprintf(u->message, sizeof(u->message),
                     "metadata %zu: \"path\" is required (string); owner/group strings, mode "
                     "octal digits",
                     i);
            u->failed = MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA;
            return u->failed;
        }
    }
    return MOAT_EXECD_UPLOAD_OK;
}

size_t moat_execd_upload_count(const moat_execd_upload *u)
{
    return u->failed == MOAT_EXECD_UPLOAD_OK ? u->n_pairs : 0;
}

moat_execd_upload_pair *moat_execd_upload_get(moat_execd_upload *u, size_t i)
{
    return i < u->n_pairs ? &u->pairs[i] : NULL;
}

void moat_execd_upload_free(moat_execd_upload *u)
{
    if (u == NULL)
        return;
    if (u->fd >= 0)
        close(u->fd);
    for (size_t i = 0; i < u->n_file; i++) {
        if (u->files != NULL && u->files[i].tmp_path != NULL) {
            unlink(u->files[i].tmp_path);
            free(u->files[i].tmp_path);
        }
    }
    for (size_t i = 0; i < u->n_pairs; i++) {
        moat_execd_upload_pair *p = &u->pairs[i];
        if (p->tmp_path != NULL) {
            unlink(p->tmp_path);
            free(p->tmp_path);
        }
        free(p->path);
        free(p->owner);
        free(p->group);
    }
    for (size_t i = 0; i < u->n_meta; i++)
        moat_buf_free(&u->metas[i]);
    moat_buf_free(&u->meta_cur);
    free(u->pairs);
    free(u->metas);
    free(u->files);
    free(u->cur_name);
    free(u->cur_filename);
    free(u->tmpdir);
    free(u);
}
