/* moat: the command-line client for moatd, on libmoat's public API alone. This file has the
 * arguments and the dispatch to a command, and the commands that make one call each: sessions
 * (create, ls, get, renew, stop, with their --json output), cp and health. Running commands
 * (exec, exec -i/-t, shell) is exec.c's (cli.h). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"

#define MAX_ENV 64

static const char *usage_text =
    "usage: moat [--addr HOST:PORT|unix:PATH] [-v|--verbose] COMMAND ...\n"
    "  create --chat UUID [--ttl SECONDS] [--image IMAGE] [--new] [--json]\n"
    "  ls [--chat UUID] [--json]\n"
    "  get SESSION [--json]\n"
    "  renew SESSION --ttl SECONDS\n"
    "  stop SESSION\n"
    "  exec SESSION [--cwd DIR] [--timeout MS] [--env K=V]... -- COMMAND...\n"
    "       (one word runs as a bash command line; several are quoted as separate arguments)\n"
    "  exec -i [-t] SESSION [--cwd DIR] -- COMMAND...\n"
    "       -i: stdin goes to the command (EOF closes it); -t: in a terminal, as\n"
    "       docker exec -it: raw mode, window size, Ctrl-C to the remote side\n"
    "  shell SESSION [--cwd DIR]   (an interactive bash: exec -it SESSION with no command)\n"
    "  cp LOCAL SESSION:PATH | cp SESSION:PATH LOCAL\n"
    "  health [--json]\n"
    "Address from --addr or MOAT_ADDR (default " MOAT_CLIENT_DEFAULT_ADDR
    "), token from MOAT_TOKEN.\n"
    "In a cluster, calls for a session follow it to the node that holds it;\n"
    "--verbose says so on stderr.\n";

static int usage(void)
{
    fputs(usage_text, stderr);
    return 2;
}

int cli_report(const moat_status *st)
{
    fprintf(stderr, "moat: %s: %s", moat_code_name(st->code),
            st->message[0] ? st->message : "(no message)");
    if (st->reason[0])
        fprintf(stderr, " (reason=%s", st->reason);
    for (size_t i = 0; i < st->detail_count; i++)
        fprintf(stderr, "%s%s=%s", st->reason[0] || i ? ", " : " (", st->details[i].key,
                st->details[i].value);
    fprintf(stderr, "%s\n", st->reason[0] || st->detail_count ? ")" : "");
    return 1;
}

int cli_fail(moat_code code, const char *reason, const char *msg)
{
    moat_status st;
    moat_status_set(&st, code, reason, "%s", msg);
    return cli_report(&st);
}

/* Unary calls' deadline. */
#define CALL_DEADLINE_MS 60000

/* Length of the UTF-8 sequence at p (at most n bytes), or 0 when it is not
 * one (overlong, surrogate, past U+10FFFF, cut short). */
static size_t utf8_len(const uint8_t *p, size_t n)
{
    uint8_t lo = 0x80, hi = 0xbf;
    size_t k;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        k = 2;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        k = 3;
        lo = p[0] == 0xe0 ? 0xa0 : 0x80;
        hi = p[0] == 0xed ? 0x9f : 0xbf;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        k = 4;
        lo = p[0] == 0xf0 ? 0x90 : 0x80;
        hi = p[0] == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (n < k || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < k; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    return k;
}

/* The slice as a C string for cJSON, which ends strings at their first NUL:
 * each NUL, and each byte that is not UTF-8, becomes U+FFFD, so the output is
 * always valid JSON text. NULL when out of memory; the caller frees it. */
static char *text_of(moat_slice s)
{
    char *out = malloc(s.len * 3 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < s.len;) {
        size_t k = s.data[i] >= 0x80 ? utf8_len(s.data + i, s.len - i) : s.data[i] != 0;
        if (k == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, s.data + i, k);
            o += k;
            i += k;
        }
    }
    out[o] = '\0';
    return out;
}

/* Sets obj[key] to the slice's text (a repeated key keeps its last value). */
static bool add_text(cJSON *obj, moat_slice key, moat_slice value)
{
    char *k = text_of(key), *v = text_of(value);
    cJSON *item = v != NULL ? cJSON_CreateString(v) : NULL;
    bool ok = k != NULL && item != NULL;
    if (ok && cJSON_GetObjectItemCaseSensitive(obj, k) != NULL)
        ok = cJSON_ReplaceItemInObjectCaseSensitive(obj, k, item);
    else if (ok)
        ok = cJSON_AddItemToObject(obj, k, item);
    if (!ok)
        cJSON_Delete(item); /* cJSON attaches nothing when adding fails */
    free(k);
    free(v);
    return ok;
}

/* An exact integer: cJSON prints doubles past 2^53 approximately. */
static bool add_int(cJSON *obj, const char *key, int64_t v)
{
    char num[24];
    snprintf(num, sizeof num, "%lld", (long long)v);
    return cJSON_AddRawToObject(obj, key, num) != NULL;
}

/* Prints obj as one line of JSON and deletes it; ok false (a member could not
 * be added) or a failed print is an out-of-memory error. */
static int print_json(cJSON *obj, bool ok)
{
    char *text = ok && obj != NULL ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (text == NULL)
        return cli_fail(MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
    puts(text);
    cJSON_free(text);
    return 0;
}

/* Label keys are cut to 255 bytes in --json output. */
#define LABEL_KEY_MAX 255

static int session_print(const moat_session *s, bool json)
{
    char created[MOAT_TIME_ISO_MAX], expires[MOAT_TIME_ISO_MAX];
    moat_time_format_iso8601(s->created_at_ms, created);
    moat_time_format_iso8601(s->expires_at_ms, expires);
    const char *status = moat_session_status_name(s->status);
    if (!json) {
        printf("%.*s\t%.*s\t%s\t%s\n", (int)s->session_id.len, (const char *)s->session_id.data,
               (int)s->chat_id.len, (const char *)s->chat_id.data, status, expires);
        return 0;
    }
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL && add_text(o, moat_slice_str("session_id"), s->session_id) &&
              add_text(o, moat_slice_str("chat_id"), s->chat_id) &&
              add_text(o, moat_slice_str("container_id"), s->container_id) &&
              cJSON_AddStringToObject(o, "status", status) != NULL &&
              cJSON_AddStringToObject(o, "created_at", created) != NULL &&
              cJSON_AddStringToObject(o, "expires_at", expires) != NULL &&
              add_int(o, "created_at_ms", s->created_at_ms) &&
              add_int(o, "expires_at_ms", s->expires_at_ms) &&
              add_text(o, moat_slice_str("image"), s->image);
    cJSON *labels = ok ? cJSON_AddObjectToObject(o, "labels") : NULL;
    ok = labels != NULL;
    for (size_t i = 0; ok && i < s->label_count; i++) {
        moat_slice key = s->labels[i].key;
        key.len = key.len < LABEL_KEY_MAX ? key.len : LABEL_KEY_MAX;
        ok = add_text(labels, key, s->labels[i].value);
    }
    return print_json(o, ok);
}

/* Prints a unary Sandboxes answer, or reports its failure. */
static int session_reply(moat_err err, const moat_session *s, const moat_status *st, bool json)
{
    return err == MOAT_OK ? session_print(s, json) : cli_report(st);
}

static int cmd_create(cli *c, const char *chat, uint32_t ttl, const char *image, bool force_new)
{
    moat_session_create_req r = {
        .chat_id = chat, .ttl_seconds = ttl, .image = image, .force_new = force_new};
    moat_session s;
    moat_status st;
    moat_err err = moat_session_create(c->client, &r, CALL_DEADLINE_MS, &s, &st);
    return session_reply(err, &s, &st, c->json);
}

static int cmd_get(cli *c, const char *session)
{
    moat_session s;
    moat_status st;
    moat_err err = moat_session_get(c->client, session, CALL_DEADLINE_MS, &s, &st);
    return session_reply(err, &s, &st, c->json);
}

static int cmd_renew(cli *c, const char *session, uint32_t ttl)
{
    moat_session s;
    moat_status st;
    moat_err err = moat_session_renew(c->client, session, ttl, CALL_DEADLINE_MS, &s, &st);
    return session_reply(err, &s, &st, c->json);
}

typedef struct list_ctx {
    bool json;
    int rc; /* a printing failure, already reported */
} list_ctx;

static bool list_entry(const moat_session *s, void *arg)
{
    list_ctx *ctx = arg;
    ctx->rc = session_print(s, ctx->json);
    return ctx->rc == 0;
}

static int cmd_ls(cli *c, const char *chat)
{
    list_ctx ctx = {c->json, 0};
    moat_status st;
    if (moat_session_list(c->client, chat, CALL_DEADLINE_MS, list_entry, &ctx, &st) != MOAT_OK)
        return cli_report(&st);
    return ctx.rc;
}

static int cmd_stop(cli *c, const char *session)
{
    bool stopped;
    moat_status st;
    if (moat_session_stop(c->client, session, CALL_DEADLINE_MS, &stopped, &st) != MOAT_OK)
        return cli_report(&st);
    if (c->json) {
        cJSON *o = cJSON_CreateObject();
        return print_json(
            o, o != NULL && add_text(o, moat_slice_str("session_id"), moat_slice_str(session)) &&
                   cJSON_AddBoolToObject(o, "stopped", stopped) != NULL);
    }
    printf("%s\t%s\n", session, stopped ? "stopped" : "not running");
    return 0;
}

static int cmd_health(cli *c)
{
    moat_health h;
    moat_status st;
    if (moat_health_check(c->client, CALL_DEADLINE_MS, &h, &st) != MOAT_OK)
        return cli_report(&st);
    const char *status = h.status == MOAT_SERVING       ? "SERVING"
                         : h.status == MOAT_NOT_SERVING ? "NOT_SERVING"
                                                        : "UNKNOWN";
    moat_slice version = h.server_version;
    if (c->json) {
        cJSON *o = cJSON_CreateObject();
        bool ok = o != NULL && cJSON_AddStringToObject(o, "status", status) != NULL &&
                  add_text(o, moat_slice_str("server_version"), version) &&
                  cJSON_AddBoolToObject(o, "docker_reachable", h.docker_reachable) != NULL &&
                  cJSON_AddNumberToObject(o, "live_sessions", h.live_sessions) != NULL &&
                  cJSON_AddNumberToObject(o, "pool_size", h.pool_size) != NULL &&
                  cJSON_AddNumberToObject(o, "pool_ready", h.pool_ready) != NULL &&
                  cJSON_AddBoolToObject(o, "pool_failing", h.pool_failing) != NULL;
        int rc = print_json(o, ok);
        if (rc)
            return rc;
    } else {
        printf("%s %.*s docker_reachable=%s live_sessions=%u pool_size=%u pool_ready=%u "
               "pool_failing=%s\n",
               status, (int)version.len, (const char *)version.data,
               h.docker_reachable ? "true" : "false", h.live_sessions, h.pool_size, h.pool_ready,
               h.pool_failing ? "true" : "false");
    }
    return h.status == MOAT_SERVING ? 0 : 1;
}
/* Fills buf with up to cap bytes of fd; *eof when the file ended. -1 on a read error. */
static ssize_t read_full(int fd, uint8_t *buf, size_t cap, bool *eof)
{
    size_t n = 0;
    *eof = false;
    while (n < cap) {
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0) {
            *eof = true;
            break;
        }
        n += (size_t)got;
    }
    return (ssize_t)n;
}

/* The file goes in pieces that each fit one request: Write at offset 0 (which
 * creates or truncates it, with the local mode), then at each following offset. Only
 * one piece is in memory at a time. */
static int cp_to_sandbox(cli *c, const char *local, const char *session, const char *path)
{
    int fd = open(local, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return cli_fail(MOAT_CODE_NOT_FOUND, "local_file", strerror(e));
    }
    size_t max = moat_file_write_max(c->client, session, path);
    uint8_t *piece = max > 0 ? malloc(max) : NULL;
    if (piece == NULL) {
        close(fd);
        return max == 0 ? cli_fail(MOAT_CODE_INVALID_ARGUMENT, "request_too_big",
                                   "the path does not fit in a request")
                        : cli_fail(MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
    }
    uint64_t offset = 0;
    bool eof = false;
    int rc = 0;
    while (rc == 0 && !eof) {
        ssize_t n = read_full(fd, piece, max, &eof);
        if (n < 0) {
            rc = cli_fail(MOAT_CODE_DATA_LOSS, "local_file", strerror(errno));
            break;
        }
        /* the first Write goes even for an empty file, so that it is created */
        if (n == 0 && offset > 0)
            break;
        moat_write_req r = {
            session, path, {piece, (size_t)n}, offset == 0 ? sb.st_mode & 07777 : 0, offset};
        uint64_t written = 0;
        moat_status st;
        if (moat_file_write(c->client, &r, CALL_DEADLINE_MS, &written, &st) != MOAT_OK) {
            rc = cli_report(&st);
        } else if (written != (uint64_t)n) {
            moat_status_set(&st, MOAT_CODE_DATA_LOSS, "short_write",
                            "the server wrote %llu of %zd bytes at offset %llu",
                            (unsigned long long)written, n, (unsigned long long)offset);
            rc = cli_report(&st);
        }
        offset += (uint64_t)n;
    }
    free(piece);
    close(fd);
    return rc;
}

static int cp_from_sandbox(cli *c, const char *session, const char *path, const char *local)
{
    moat_call *call;
    moat_status st;
    if (moat_file_read(c->client, session, path, 0, 0, 0, &call, &st) != MOAT_OK)
        return cli_report(&st);
    int fd = open(local, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        moat_call_free(call);
        return cli_fail(MOAT_CODE_PERMISSION_DENIED, "local_file", strerror(errno));
    }
    moat_file_chunk chunk;
    moat_err err;
    bool ok = true;
    while ((err = moat_file_next(call, -1, &chunk)) != MOAT_E_CLOSED) {
        if (err != MOAT_OK ||
            (chunk.data.len && pwrite(fd, chunk.data.data, chunk.data.len, (off_t)chunk.offset) !=
                                   (ssize_t)chunk.data.len)) {
            ok = false;
            moat_call_cancel(call, "local write failed");
        }
    }
    st = *moat_call_status(call);
    moat_call_free(call);
    close(fd);
    if (st.code != MOAT_CODE_OK)
        return cli_report(&st);
    return ok ? 0 : cli_fail(MOAT_CODE_DATA_LOSS, "local_file", "cannot write the local file");
}

/* --verbose: each redirect a call follows, on stderr. */
static void on_redirect(const char *session, const char *from, const char *to, void *arg)
{
    (void)arg;
    fprintf(stderr, "moat: session %s is at %s (redirected by %s)\n", session, to, from);
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    const char *addr = getenv("MOAT_ADDR");
    int i = 1;
    bool verbose = false;
    for (;;) {
        if (i + 1 < argc && strcmp(argv[i], "--addr") == 0) {
            addr = argv[i + 1];
            i += 2;
        } else if (i < argc && (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0)) {
            verbose = true;
            i++;
        } else {
            break;
        }
    }
    if (i >= argc)
        return usage();
    const char *cmd = argv[i];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    /* Options may come anywhere after the command; "--" ends them (exec's command follows). */
    static const struct option opts[] = {
        {"chat", required_argument, NULL, 'c'},
        {"ttl", required_argument, NULL, 'L'},
        {"image", required_argument, NULL, 'm'}, /* create's; empty: the server's default */
        {"interactive", no_argument, NULL, 'i'},
        {"tty", no_argument, NULL, 't'},
        {"new", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},
        {"cwd", required_argument, NULL, 'd'},
        {"timeout", required_argument, NULL, 'T'},
        {"env", required_argument, NULL, 'e'},
        {"addr", required_argument, NULL, 'a'},
        {"verbose", no_argument, NULL, 'v'}, /* also before the command */
        {NULL, 0, NULL, 0},
    };
    const char *chat = NULL, *cwd = NULL, *image = NULL;
    uint64_t ttl = 0, timeout_ms = 0;
    bool force_new = false, json = false, have_ttl = false, forward_stdin = false, tty = false;
    moat_kv env[MAX_ENV];
    size_t env_count = 0;
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    optind = 1;
    int o;
    while ((o = getopt_long(sub_argc, sub_argv, "itv", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            chat = optarg;
            break;
        case 'L':
            if (!parse_u64(optarg, &ttl) || ttl > UINT32_MAX)
                return cli_fail(MOAT_CODE_INVALID_ARGUMENT, "bad_ttl", "--ttl takes seconds");
            have_ttl = true;
            break;
        case 'n':
            force_new = true;
            break;
        case 'm':
            image = optarg;
            break;
        case 'i':
            forward_stdin = true;
            break;
        case 't':
            tty = true;
            break;
        case 'j':
            json = true;
            break;
        case 'd':
            cwd = optarg;
            break;
        case 'T':
            if (!parse_u64(optarg, &timeout_ms))
                return cli_fail(MOAT_CODE_INVALID_ARGUMENT, "bad_timeout",
                                "--timeout takes milliseconds");
            break;
        case 'e': {
            const char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg || env_count == MAX_ENV)
                return cli_fail(MOAT_CODE_INVALID_ARGUMENT, "bad_env", "--env takes K=V");
            env[env_count].key = (moat_slice){(const uint8_t *)optarg, (size_t)(eq - optarg)};
            env[env_count].value = moat_slice_str(eq + 1);
            env_count++;
            break;
        }
        case 'a':
            addr = optarg;
            break;
        case 'v':
            verbose = true;
            break;
        default:
            return usage();
        }
    }
    char **rest = sub_argv + optind;
    int nrest = sub_argc - optind;

    bool known = strcmp(cmd, "create") == 0 || strcmp(cmd, "ls") == 0 || strcmp(cmd, "get") == 0 ||
                 strcmp(cmd, "renew") == 0 || strcmp(cmd, "stop") == 0 ||
                 strcmp(cmd, "exec") == 0 || strcmp(cmd, "cp") == 0 || strcmp(cmd, "health") == 0 ||
                 strcmp(cmd, "shell") == 0;
    if (!known)
        return usage();
    bool interactive = forward_stdin || tty;
    /* An interactive call has no environment or timeout of its own. */
    if (interactive && (strcmp(cmd, "exec") != 0 || env_count > 0 || timeout_ms > 0))
        return usage();
    if ((strcmp(cmd, "create") == 0 && !chat) ||
        (strcmp(cmd, "renew") == 0 && (!have_ttl || nrest != 1)) ||
        ((strcmp(cmd, "get") == 0 || strcmp(cmd, "stop") == 0) && nrest != 1) ||
        (strcmp(cmd, "exec") == 0 && nrest < 2) || (strcmp(cmd, "cp") == 0 && nrest != 2) ||
        (strcmp(cmd, "shell") == 0 && nrest != 1))
        return usage();

    moat_client_options copts = {.token = getenv("MOAT_TOKEN"),
                                 .client_name = "moat-cli/" MOAT_VERSION};
    cli c = {.json = json};
    moat_status st;
    if (moat_client_connect(addr && addr[0] ? addr : MOAT_CLIENT_DEFAULT_ADDR, &copts, &c.client,
                            &st) != MOAT_OK)
        return cli_report(&st);
    c.max_frame = moat_client_get_limits(c.client)->max_frame_size;
    if (verbose)
        moat_client_on_redirect(c.client, on_redirect, NULL);
    int rc;
    if (strcmp(cmd, "create") == 0)
        rc = cmd_create(&c, chat, (uint32_t)ttl, image, force_new);
    else if (strcmp(cmd, "ls") == 0)
        rc = cmd_ls(&c, chat);
    else if (strcmp(cmd, "get") == 0)
        rc = cmd_get(&c, rest[0]);
    else if (strcmp(cmd, "renew") == 0)
        rc = cmd_renew(&c, rest[0], (uint32_t)ttl);
    else if (strcmp(cmd, "stop") == 0)
        rc = cmd_stop(&c, rest[0]);
    else if (strcmp(cmd, "exec") == 0 && interactive) {
        char *command = cli_command_line(&c, nrest - 1, rest + 1, &rc);
        if (command != NULL)
            rc = cmd_interactive(&c, rest[0], cwd, forward_stdin, tty, command);
        free(command);
    } else if (strcmp(cmd, "exec") == 0)
        rc = cmd_exec(&c, rest[0], cwd, timeout_ms, env, env_count, nrest - 1, rest + 1);
    else if (strcmp(cmd, "shell") == 0)
        rc = cmd_interactive(&c, rest[0], cwd, true, true, "");
    else if (strcmp(cmd, "health") == 0)
        rc = cmd_health(&c);
    else {
        /* cp: whichever side has SESSION:PATH (the local side must not). */
        const char *colon0 = strchr(rest[0], ':'), *colon1 = strchr(rest[1], ':');
        char session[128];
        if (colon1 && !colon0 && (size_t)(colon1 - rest[1]) < sizeof session) {
            memcpy(session, rest[1], (size_t)(colon1 - rest[1]));
            session[colon1 - rest[1]] = '\0';
            rc = cp_to_sandbox(&c, rest[0], session, colon1 + 1);
        } else if (colon0 && !colon1 && (size_t)(colon0 - rest[0]) < sizeof session) {
            memcpy(session, rest[0], (size_t)(colon0 - rest[0]));
            session[colon0 - rest[0]] = '\0';
            rc = cp_from_sandbox(&c, session, colon0 + 1, rest[1]);
        } else {
            rc = usage();
        }
    }
    moat_client_close(c.client);
    return rc;
}
