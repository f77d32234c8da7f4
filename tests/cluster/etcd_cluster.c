#include "etcd_cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster/etcd.h"
#include "ports.h"

bool etcd_cluster_available(void)
{
    return access(ETCD_BINARY, X_OK) == 0;
}

void etcd_cluster_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

long etcd_cluster_key_count(moat_etcd *etcd, const char *key)
{
    moat_etcd_result r;
    moat_status st;
    long count = moat_etcd_range(etcd, moat_slice_str(key), false, 0, &r, &st) == MOAT_CODE_OK
                     ? (long)r.kv_count
                     : -1;
    moat_etcd_result_free(&r);
    return count;
}

bool etcd_cluster_lists_node(moat_etcd *etcd, const char *id, moat_node *out)
{
    moat_node *nodes;
    size_t count;
    moat_status st;
    bool found = false;
    if (moat_cluster_nodes(etcd, &nodes, &count, NULL, &st) != MOAT_CODE_OK)
        return false;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(nodes[i].id, id) == 0) {
            found = true;
            if (out != NULL)
                *out = nodes[i];
        }
    }
    free(nodes);
    return found;
}

static pid_t spawn(const etcd_cluster *c, int m)
{
    char name[16], data[128], log[128], peer[64], initial[512];
    snprintf(name, sizeof(name), "m%d", m);
    snprintf(data, sizeof(data), "%s/%s.data", c->dir, name);
    snprintf(log, sizeof(log), "%s/%s.log", c->dir, name);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", c->peer_port[m]);
    size_t off = 0;
    for (int i = 0; i < ETCD_CLUSTER_MEMBERS; i++)
        off += (size_t)snprintf(initial + off, sizeof(initial) - off, "%sm%d=http://127.0.0.1:%d",
                                i > 0 ? "," : "", i, c->peer_port[i]);
    const char *plain[] = {ETCD_BINARY, "--name",
                           name,        "--data-dir",
                           data,        "--listen-client-urls",
                           c->url[m],   "--advertise-client-urls",
                           c->url[m],   "--listen-peer-urls",
                           peer,        "--initial-advertise-peer-urls",
                           peer,        "--initial-cluster",
                           initial,     "--initial-cluster-token",
                           c->dir,      "--initial-cluster-state",
                           "new",       "--heartbeat-interval",
                           "50",        "--election-timeout",
                           "500"};
    const char *tls[] = {"--cert-file",
                         c->cert[m],
                         "--key-file",
                         c->key[m],
                         "--client-cert-auth",
                         "--trusted-ca-file",
                         c->tls != NULL ? c->tls->ca : NULL};
    const char *argv[sizeof(plain) / sizeof(plain[0]) + sizeof(tls) / sizeof(tls[0]) + 1];
    size_t argc = 0;
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
        argv[argc++] = plain[i];
    for (size_t i = 0; c->tls != NULL && i < sizeof(tls) / sizeof(tls[0]); i++)
        argv[argc++] = tls[i];
    argv[argc] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Dies with the test, however the test ends. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    execv(ETCD_BINARY, (char *const *)argv);
    _exit(127);
}

/* The harness's own clients: plain, or with the cluster's client certificate. */
static moat_etcd *harness_client(const etcd_cluster *c, const char *const *urls, size_t n,
                                 long connect_timeout_ms, long request_timeout_ms)
{
    moat_etcd_config cfg = {.endpoints = urls,
                            .endpoint_count = n,
                            .connect_timeout_ms = connect_timeout_ms,
                            .request_timeout_ms = request_timeout_ms};
    if (c->tls != NULL)
        cfg.tls = c->tls->client;
    moat_status st;
    return moat_etcd_open(&cfg, &st);
}

/* A write through member m alone commits. */
static bool member_writes(const etcd_cluster *c, int m)
{
    const char *url[] = {c->url[m]};
    moat_etcd *e = harness_client(c, url, 1, 200, 1000);
    if (e == NULL)
        return false;
    moat_status st;
    moat_etcd_result r;
    bool ok = moat_etcd_put(e, moat_slice_str("/test/ready"), moat_slice_str("1"), 0, &r, &st) ==
              MOAT_CODE_OK;
    moat_etcd_result_free(&r);
    moat_etcd_close(e);
    return ok;
}

static bool exited(pid_t pid)
{
    return waitpid(pid, NULL, WNOHANG) == pid;
}

static void kill_all(etcd_cluster *c)
{
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(c, m);
}

int etcd_cluster_start(etcd_cluster *c, const etcd_cluster_tls *tls, int wait_s)
{
    memset(c, 0, sizeof(*c));
    c->tls = tls;
    for (int m = 0; tls != NULL && m < ETCD_CLUSTER_MEMBERS; m++) {
        c->cert[m] = tls->cert;
        c->key[m] = tls->key;
    }
    snprintf(c->dir, sizeof(c->dir), "/tmp/moat-etcd-XXXXXX");
    if (mkdtemp(c->dir) == NULL)
        return -1;
    /* A port found free may be taken before etcd binds it: then start again on others. */
    for (int attempt = 0; attempt < 3; attempt++) {
        for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++) {
            c->client_port[m] = free_port();
            c->peer_port[m] = free_port();
            snprintf(c->url[m], sizeof(c->url[m]), "%s://127.0.0.1:%d",
                     tls != NULL ? "https" : "http", c->client_port[m]);
            c->urls[m] = c->url[m];
        }
        for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
            c->pid[m] = spawn(c, m);
        bool died = false;
        for (int tick = 0; tick < wait_s * 10 && !died; tick++) {
            bool all = true;
            for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++) {
                if (exited(c->pid[m])) {
                    c->pid[m] = 0;
                    died = true;
                }
                all = all && !died && member_writes(c, m);
            }
            if (all)
                return 0;
            etcd_cluster_sleep_ms(100);
        }
        kill_all(c);
        if (!died)
            return -1;
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s/*.data", c->dir);
        if (system(cmd) != 0)
            return -1;
    }
    return -1;
}

void etcd_cluster_kill(etcd_cluster *c, int member)
{
    if (c->pid[member] <= 0)
        return;
    kill(c->pid[member], SIGKILL);
    waitpid(c->pid[member], NULL, 0);
    c->pid[member] = 0;
}

int etcd_cluster_restart(etcd_cluster *c, int member)
{
    if (c->pid[member] > 0)
        return -1;
    c->pid[member] = spawn(c, member);
    return c->pid[member] > 0 ? 0 : -1;
}

void etcd_cluster_stop(etcd_cluster *c)
{
    kill_all(c);
    if (c->dir[0] != '\0') {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", c->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "etcd_cluster: could not remove %s\n", c->dir);
        c->dir[0] = '\0';
    }
}

int etcd_cluster_open(etcd_cluster *c, const etcd_cluster_tls *tls, moat_etcd **etcd,
                      long request_timeout_ms, int wait_s)
{
    *etcd = NULL;
    if (!etcd_cluster_available())
        return 0;
    if (etcd_cluster_start(c, tls, wait_s) != 0) {
        /* Its logs say why; then nothing of it is left behind. */
        fprintf(stderr, "etcd cluster did not start; its members' logs:\n");
        for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++) {
            char cmd[160];
            snprintf(cmd, sizeof(cmd), "tail -n 20 %s/m%d.log >&2", c->dir, m);
            if (system(cmd) != 0)
                fprintf(stderr, "(no log for member %d)\n", m);
        }
        etcd_cluster_stop(c);
        return -1;
    }
    *etcd = harness_client(c, c->urls, ETCD_CLUSTER_MEMBERS, 500, request_timeout_ms);
    if (*etcd == NULL) {
        fprintf(stderr, "etcd cluster started, but no client for it could be made\n");
        etcd_cluster_stop(c);
        return -1;
    }
    return 0;
}

void etcd_cluster_close(etcd_cluster *c, moat_etcd **etcd)
{
    moat_etcd_close(*etcd);
    *etcd = NULL;
    etcd_cluster_stop(c);
}
