#include "attack.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "wire/wire.h"

static int connect_from(int port, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in s = {0}, d = {0};
    s.sin_family = d.sin_family = AF_INET;
    d.sin_port = htons((uint16_t)port);
    d.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    inet_pton(AF_INET, src, &s.sin_addr);
    if (bind(fd, (struct sockaddr *)&s, sizeof(s)) != 0 ||
        connect(fd, (struct sockaddr *)&d, sizeof(d)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void silent_main(int port, int n, int reconnect_ms, const char *src)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < (rlim_t)n + 64) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    struct pollfd *p = calloc((size_t)n, sizeof(*p));
    long long *opened = calloc((size_t)n, sizeof(*opened));
    if (p == NULL || opened == NULL)
        _exit(1);
    for (int i = 0; i < n; i++) {
        p[i].fd = connect_from(port, src);
        p[i].events = POLLIN;
        opened[i] = mono_ms();
    }
    for (;;) {
        poll(p, (nfds_t)n, 100);
        long long now = mono_ms();
        for (int i = 0; i < n; i++) {
            if (p[i].fd >= 0 && p[i].revents != 0) {
                close(p[i].fd); /* closed by moatd */
                p[i].fd = -1;
            }
            p[i].revents = 0;
            if (p[i].fd < 0 && now - opened[i] >= reconnect_ms) {
                p[i].fd = connect_from(port, src);
                opened[i] = now;
            }
        }
    }
}

static void hellos_main(int port, const char *src, int report_fd)
{
    moat_frame f = {0};
    f.kind = MOAT_FRAME_HELLO;
    f.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    f.u.hello.client_name = moat_slice_str("attacker");
    f.u.hello.token = moat_slice_str("not-the-token");
    uint8_t hello[128];
    size_t len = 0;
    if (moat_wire_encode(&f, hello, sizeof(hello), &len) != MOAT_OK)
        _exit(1);
    long long count = 0;
    for (;;) {
        int fd = connect_from(port, src);
        if (fd < 0) {
            usleep(1000);
            continue;
        }
        if (send(fd, hello, len, MSG_NOSIGNAL) == (ssize_t)len) {
            /* Read the refusal to its end (bounded), as a guesser wanting the verdict would. */
            char buf[512];
            struct pollfd pfd = {fd, POLLIN, 0};
            while (poll(&pfd, 1, 2000) == 1 && read(fd, buf, sizeof(buf)) > 0) {
            }
        }
        close(fd);
        count++;
        /* Every one: a test that ends within its first hundred must still see them. */
        (void)!pwrite(report_fd, &count, sizeof(count), 0);
    }
}

static pid_t spawn(void (*body)(attack *, int, int, const char *), attack *a, int port, int n,
                   const char *src)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        body(a, port, n, src);
        _exit(0);
    }
    return pid;
}

static void run_silent(attack *a, int port, int n, const char *src)
{
    (void)a;
    silent_main(port, n, a->reconnect_ms, src);
}

static void run_hellos(attack *a, int port, int n, const char *src)
{
    (void)n;
    hellos_main(port, src, a->counts_fd);
}

int attack_start(attack *a, int port, int silent, int reconnect_ms, const char *silent_src,
                 const char *hello_src)
{
    memset(a, 0, sizeof(*a));
    a->reconnect_ms = reconnect_ms;
    char path[] = "/tmp/moat-attack-XXXXXX";
    a->counts_fd = mkstemp(path);
    if (a->counts_fd < 0)
        return -1;
    unlink(path);
    long long zero = 0;
    (void)!pwrite(a->counts_fd, &zero, sizeof(zero), 0);
    a->silent_pid = spawn(run_silent, a, port, silent, silent_src);
    a->hellos_pid = spawn(run_hellos, a, port, 0, hello_src);
    if (a->silent_pid < 0 || a->hellos_pid < 0) {
        attack_stop(a);
        return -1;
    }
    return 0;
}

long long attack_hellos(attack *a)
{
    long long n = 0;
    if (pread(a->counts_fd, &n, sizeof(n), 0) != (ssize_t)sizeof(n))
        return 0;
    return n;
}

void attack_stop(attack *a)
{
    pid_t pids[2] = {a->silent_pid, a->hellos_pid};
    for (int i = 0; i < 2; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    }
    a->silent_pid = a->hellos_pid = 0;
    if (a->counts_fd > 0)
        close(a->counts_fd);
    a->counts_fd = -1;
}
