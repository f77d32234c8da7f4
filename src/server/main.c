/* moatd: reads the configuration from argv, the environment and a file, sets up the process
 * and runs one server (server.h) until it has drained. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <curl/curl.h>

#include "server/server.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: moatd [-c FILE] [--KEY=VALUE]... [--check-config] [--help] [--version]\n"
               "\n"
               "moatd serves moat's framed protobuf protocol: sandbox sessions on Docker and\n"
               "commands streamed from their moat-execd.\n"
               "\n"
               "  -c, --config FILE   read FILE (also MOAT_CONFIG); see docs/CONFIG.md\n"
               "  --check-config      validate the configuration and exit (0 when valid)\n"
               "  --help              this text\n"
               "  --version           print the version\n"
               "\n"
               "Every key below may be set in the file as `key = value`, in the environment\n"
               "as MOAT_<KEY>, or as a flag; flags win over the environment, which wins over\n"
               "the file.\n\n");
    moat_server_config_print_keys(f);
}

/* The directory of this executable into buf, or NULL. */
static const char *find_bindir(char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash == NULL)
        return NULL;
    *slash = '\0';
    return buf;
}

/* Defaults, then the file, the environment and the flags. Returns 0, or 2
 * after printing why. check_only (may be NULL) reports --check-config. */
static int load_config(moat_server_config *cfg, int argc, char **argv, bool *check_only, bool quiet)
{
    moat_server_config_defaults(cfg);
    char err[600];
    const char *file = getenv("MOAT_CONFIG");
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc)
            file = argv[++i];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            file = argv[i] + 9;
    }
    if (file != NULL && file[0] != '\0' &&
        moat_server_config_load_file(cfg, file, err, sizeof(err)) != MOAT_OK)
        goto fail;
    if (moat_server_config_apply_env(cfg, err, sizeof(err)) != MOAT_OK)
        goto fail;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0)
            continue;
        if (strcmp(a, "--check-config") == 0) {
            if (check_only != NULL)
                *check_only = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, sizeof(err), "unexpected argument \"%s\" (see --help)", a);
            goto fail;
        }
        char key[80];
        const char *value;
        const char *eq = strchr(a + 2, '=');
        if (eq != NULL) {
            size_t kl = (size_t)(eq - (a + 2));
            if (kl >= sizeof(key))
                kl = sizeof(key) - 1;
            memcpy(key, a + 2, kl);
            key[kl] = '\0';
            value = eq + 1;
        } else {
            snprintf(key, sizeof(key), "%s", a + 2);
            if (i + 1 >= argc) {
                snprintf(err, sizeof(err), "--%s needs a value", key);
                goto fail;
            }
            value = argv[++i];
        }
        char why[400];
        moat_err e = moat_server_config_set(cfg, key, value, why, sizeof(why));
        if (e != MOAT_OK) {
            snprintf(err, sizeof(err), "--%s: %s", key, why);
            goto fail;
        }
    }
    char bindir[4096];
    if (moat_server_config_finish(cfg, find_bindir(bindir, sizeof(bindir)), err, sizeof(err)) !=
        MOAT_OK)
        goto fail;
    return 0;
fail:
    if (!quiet)
        fprintf(stderr, "moatd: %s\n", err);
    else
        moat_log(MOAT_LOG_ERROR, "config_invalid", "error=\"%s\"", err);
    moat_server_config_free(cfg);
    return 2;
}

typedef struct cmdline {
    int argc;
    char **argv;
} cmdline;

/* SIGHUP: the file, the environment and the flags again. */
static bool reload(moat_server_config *next, void *ud)
{
    const cmdline *cl = ud;
    return load_config(next, cl->argc, cl->argv, NULL, true) == 0;
}

/* One descriptor per connection: allow as many as the hard limit does. */
static void raise_nofile(void)
{
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
}

static int serve(moat_server_config *cfg, cmdline *cl)
{
    moat_server *s;
    if (moat_server_init(&s, cfg, &moat_server_docker_runtime) != MOAT_OK)
        return 1;
    moat_server_handle_signals(s, reload, cl);
    if (moat_server_listen(s) != MOAT_OK)
        moat_server_close(s, NULL, NULL);
    int rc = moat_server_run(s);
    moat_server_free(s);
    moat_log(MOAT_LOG_INFO, "stopped", "pid=%d", (int)getpid());
    return rc;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("moatd %s\n", MOAT_VERSION);
            return 0;
        }
    }
    moat_server_config cfg;
    bool check_only = false;
    if (load_config(&cfg, argc, argv, &check_only, false) != 0)
        return 2;
    if (check_only) {
        moat_status rst;
        int rc = 0;
        if (moat_server_check_runtime(&cfg, &rst) != MOAT_CODE_OK) {
            fprintf(stderr, "moatd: %s\n", rst.message);
            rc = 2;
        } else {
            printf("moatd: configuration is valid (file: %s)\n",
                   cfg.config_file[0] ? cfg.config_file : "none");
        }
        moat_server_config_free(&cfg);
        return rc;
    }
    moat_log_set_level(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    char pool[16];
    snprintf(pool, sizeof(pool), "%u", cfg.threadpool_size);
    setenv("UV_THREADPOOL_SIZE", pool, 1);
    /* moatd reaches Docker and execd over Unix sockets: skip loading the TLS
     * library's tables up front (OpenSSL initialises itself if a tcp:// Docker
     * host with TLS ever needs it). The first global init decides; later
     * ones by the runtime and the bridge only count references. */
    curl_global_init(CURL_GLOBAL_NOTHING);
    cmdline cl = {argc, argv};
    int rc = serve(&cfg, &cl);
    curl_global_cleanup();
    return rc;
}
