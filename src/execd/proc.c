/* Process table, spawning, reaping (execd may be PID 1), timeouts and retention. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

xd_globals xd = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static uint64_t now_ns(void)
{
    return moat_time_mono_ns();
}

void xd_proc_init(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_destroy(&xd.cond);
    pthread_cond_init(&xd.cond, &ca);
    pthread_condattr_destroy(&ca);
}

static void cmd_free(xd_cmd *c)
{
    if (c->log_path != NULL) {
        unlink(c->log_path);
        free(c->log_path);
    }
    if (c->notify_r >= 0)
        close(c->notify_r);
    if (c->notify_w >= 0)
        close(c->notify_w);
    free(c->command);
    free(c);
}

/* Drops the oldest finished commands past their retention, or (when the table is full)
 * the oldest finished one regardless. Called with the lock held. */
static void table_prune(bool force_one)
{
    uint64_t now = now_ns();
    xd_cmd **pp = &xd.cmds;
    xd_cmd *oldest = NULL, **oldest_pp = NULL;
    while (*pp != NULL) {
        xd_cmd *c = *pp;
        if (!c->running && c->pid != 0 && c->refs == 1 && c->expire_ns != 0) {
            if (now >= c->expire_ns) {
                *pp = c->next;
                xd.ncmds--;
                cmd_free(c);
                continue;
            }
            if (oldest == NULL || c->expire_ns < oldest->expire_ns) {
                oldest = c;
                oldest_pp = pp;
            }
        }
        pp = &c->next;
    }
    if (force_one && oldest != NULL) {
        *oldest_pp = oldest->next;
        xd.ncmds--;
        cmd_free(oldest);
    }
}

xd_cmd *xd_cmd_new(const char *command, bool background, const char *id_or_null)
{
    xd_cmd *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->command = strdup(command ? command : "");
    c->background = background;
    c->notify_r = c->notify_w = -1;
    int p[2];
    if (c->command == NULL || pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
        free(c->command);
        free(c);
        return NULL;
    }
    c->notify_r = p[0];
    c->notify_w = p[1];
    if (id_or_null != NULL) {
        snprintf(c->id, sizeof(c->id), "%s", id_or_null);
    } else {
        char u[MOAT_UUID_STR_LEN];
        moat_uuid_generate(u);
        size_t k = 0;
        for (size_t i = 0; u[i] && k < 32; i++)
            if (u[i] != '-')
                c->id[k++] = u[i];
        c->id[k] = '\0';
    }
    c->started_ms = moat_time_now_ms();
    c->start_ns = now_ns();
    c->refs = 2;
    pthread_mutex_lock(&xd.lock);
    if (xd.ncmds >= xd.cfg.max_commands)
        table_prune(true);
    if (xd.ncmds >= xd.cfg.max_commands) {
        pthread_mutex_unlock(&xd.lock);
        c->refs = 0;
        cmd_free(c);
        return NULL;
    }
    c->next = xd.cmds;
    xd.cmds = c;
    xd.ncmds++;
    pthread_mutex_unlock(&xd.lock);
    return c;
}

void xd_cmd_unref(xd_cmd *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&xd.lock);
    c->refs--;
    pthread_mutex_unlock(&xd.lock);
}

xd_cmd *xd_cmd_find(const char *id)
{
    pthread_mutex_lock(&xd.lock);
    xd_cmd *c = xd.cmds;
    while (c != NULL && strcmp(c->id, id) != 0)
        c = c->next;
    if (c != NULL)
        c->refs++;
    pthread_mutex_unlock(&xd.lock);
    return c;
}

/* Records how the process ended. Lock held. */
static void record_exit(xd_cmd *c, int status)
{
    c->running = false;
    c->finished_ms = moat_time_now_ms();
    c->expire_ns = now_ns() + xd.cfg.retention_ns;
    if (WIFEXITED(status)) {
        c->exit_code = WEXITSTATUS(status);
        c->term_sig = 0;
        if (c->exit_code != 0)
            snprintf(c->error, sizeof(c->error), "exit status %d", c->exit_code);
    } else if (WIFSIGNALED(status)) {
        c->exit_code = -1;
        c->term_sig = WTERMSIG(status);
        /* Go's ExitError text: "signal: killed", lower case. */
        const char *name = strsignal(c->term_sig);
        snprintf(c->error, sizeof(c->error), "signal: %s", name ? name : "unknown");
        for (char *p = c->error + 8; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    }
    if (c->start_failed)
        c->exit_code = 255;
    ssize_t w = write(c->notify_w, "x", 1);
    (void)w;
}

static void reap_all(void)
{
    pthread_mutex_lock(&xd.lock);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            break;
        for (xd_cmd *c = xd.cmds; c != NULL; c = c->next) {
            if (c->pid == pid && c->running) {
                record_exit(c, status);
                break;
            }
        }
    }
    pthread_cond_broadcast(&xd.cond);
    pthread_mutex_unlock(&xd.lock);
}

/* A child started with clone(CLONE_VM | CLONE_VFORK), as posix_spawn starts its own, shares
 * execd's memory until it execs: only system calls here, no locks and no allocation. The ids
 * change through syscall() because glibc's set*id wrappers would make every thread of execd
 * (whose memory the child shares) change its ids too. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XD_ASAN 1
#endif
#elif defined(__SANITIZE_ADDRESS__)
#define XD_ASAN 1
#endif
#ifdef XD_ASAN
#include <sanitizer/asan_interface.h>
/* ASan would poison the shadow of the child's stack frames and nobody would unpoison it: the
 * child never returns, and memory mapped there later (a thread's stack) read as poisoned. */
#define XD_CHILD_NO_ASAN __attribute__((no_sanitize("address")))
#else
#define XD_CHILD_NO_ASAN
#endif

typedef struct spawn_clone_args {
    const xd_spawn *sp;
    int err; /* set by the child when it fails before exec */
} spawn_clone_args;

XD_CHILD_NO_ASAN static int child_of_clone(void *arg)
{
    spawn_clone_args *a = arg;
    const xd_spawn *sp = a->sp;
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL);
    if (sp->controlling_tty)
        setsid();
    else
        setpgid(0, 0);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    /* A request thread runs with the user's effective id (xd_become_run_as_fs): take root's
     * back first, which restores the capabilities the id changes below need. */
    if ((sp->set_ids && syscall(SYS_setresuid, -1, 0, -1) != 0) || devnull < 0 ||
        dup2(sp->with_stdin ? sp->in_fd : devnull, 0) < 0 ||
        dup2(sp->out_fd >= 0 ? sp->out_fd : devnull, 1) < 0 ||
        dup2(sp->err_fd >= 0 ? sp->err_fd : devnull, 2) < 0 ||
        (sp->controlling_tty && ioctl(0, TIOCSCTTY, 0) != 0) ||
        (sp->cwd != NULL && chdir(sp->cwd) != 0) ||
        (sp->set_ids && (syscall(SYS_setgroups, (size_t)sp->ngroups, sp->groups) != 0 ||
                         syscall(SYS_setresgid, sp->gid, sp->gid, sp->gid) != 0 ||
                         syscall(SYS_setresuid, sp->uid, sp->uid, sp->uid) != 0))) {
        a->err = errno;
        _exit(127);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(sp->argv[0], sp->argv, sp->envp);
    a->err = errno;
    _exit(127);
}

/* Starts a command under other ids, or on a terminal, without copying execd's page tables
 * (fork would, half a millisecond of every start on a small VM). *pid > 0 when a child
 * exists, even on failure. Returns 0 or the errno of the step that failed. */
static int spawn_clone(const xd_spawn *sp, pid_t *pid)
{
    enum { CHILD_STACK = 64 * 1024 };
    *pid = -1;
    void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return errno;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    spawn_clone_args a = {.sp = sp, .err = 0};
    /* CLONE_VFORK: this thread resumes once the child has exec'd or exited. */
    *pid = clone(child_of_clone, (char *)stack + CHILD_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    int err = *pid < 0 ? errno : a.err;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
#ifdef XD_ASAN
    __asan_unpoison_memory_region(stack, CHILD_STACK);
#endif
    munmap(stack, CHILD_STACK);
    return err;
}

#ifdef MOAT_EXECD_SPAWN_FORK
/* bench/execd's comparison build only: fork + exec, what posix_spawn replaced here, so that a
 * benchmark can put the two side by side in one run. Only async-signal-safe calls in the child. */
static int spawn_plain(const xd_spawn *sp, pid_t *pid)
{
    *pid = fork();
    if (*pid < 0)
        return errno;
    if (*pid == 0) {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        for (int s = 1; s < NSIG; s++)
            sigaction(s, &dfl, NULL);
        setpgid(0, 0);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull < 0 || dup2(sp->with_stdin ? sp->in_fd : devnull, 0) < 0 ||
            dup2(sp->out_fd >= 0 ? sp->out_fd : devnull, 1) < 0 ||
            dup2(sp->err_fd >= 0 ? sp->err_fd : devnull, 2) < 0 ||
            (sp->cwd != NULL && chdir(sp->cwd) != 0))
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(sp->argv[0], sp->argv, sp->envp);
        _exit(127);
    }
    return 0;
}
#else
/* posix_spawn cannot change the user or groups, nor give a controlling terminal: commands
 * that keep execd's ids and need no terminal start here, the others in spawn_clone. Returns 0
 * or an errno. */
static int spawn_plain(const xd_spawn *sp, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int err = posix_spawn_file_actions_init(&fa);
    if (err != 0)
        return err;
    err = posix_spawnattr_init(&at);
    if (err != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return err;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    err = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                            POSIX_SPAWN_SETSIGDEF);
    if (err == 0)
        err = posix_spawnattr_setpgroup(&at, 0);
    if (err == 0)
        err = posix_spawnattr_setsigmask(&at, &none);
    if (err == 0)
        err = posix_spawnattr_setsigdefault(&at, &all);
    if (err == 0)
        err = sp->with_stdin ? posix_spawn_file_actions_adddup2(&fa, sp->in_fd, 0)
                             : posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDWR, 0);
    const int outs[2] = {sp->out_fd, sp->err_fd};
    for (int i = 0; i < 2 && err == 0; i++)
        err = outs[i] >= 0 ? posix_spawn_file_actions_adddup2(&fa, outs[i], i + 1)
                           : posix_spawn_file_actions_addopen(&fa, i + 1, "/dev/null", O_RDWR, 0);
    if (err == 0 && sp->cwd != NULL)
        err = posix_spawn_file_actions_addchdir_np(&fa, sp->cwd);
    if (err == 0)
        err = posix_spawn(pid, sp->argv[0], &fa, &at, sp->argv, sp->envp);
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    return err;
}
#endif

/* Under the table lock: the command runs as pid from now on. */
static void mark_started(xd_cmd *c, pid_t pid, uint64_t timeout_ms)
{
    c->pid = pid;
    c->running = true;
    c->started_ms = moat_time_now_ms();
    c->start_ns = now_ns();
    if (timeout_ms > 0)
        c->deadline_ns = c->start_ns + timeout_ms * 1000000ull;
}

void xd_become_run_as_fs(void)
{
    if (!xd.cfg.run_as)
        return;
    /* The effective ids of this thread only: a raw system call changes the calling thread's,
     * where glibc's wrappers would change every thread's. The file system ids follow them and
     * the thread's effective capabilities are cleared, while real and saved ids stay root's.
     * setfsuid would be lighter, but gVisor does not implement it. */
    syscall(SYS_setresgid, -1, xd.cfg.run_gid, -1);
    syscall(SYS_setresuid, -1, xd.cfg.run_uid, -1);
}

int xd_cmd_start(xd_cmd *c, const xd_spawn *sp_in, uint64_t timeout_ms, char *err, size_t errlen)
{
    xd_spawn sp_run_as = *sp_in;
    gid_t run_groups[1] = {xd.cfg.run_gid};
    if (!sp_in->set_ids && xd.cfg.run_as) {
        sp_run_as.set_ids = true;
        sp_run_as.uid = xd.cfg.run_uid;
        sp_run_as.gid = xd.cfg.run_gid;
        sp_run_as.groups = run_groups;
        sp_run_as.ngroups = 1;
    }
    const xd_spawn *sp = &sp_run_as;
    /* Spawn with the table locked so the reaper cannot collect the pid before it is known. */
    pthread_mutex_lock(&xd.lock);
    pid_t pid = -1;
    int e;
    e = sp->set_ids || sp->controlling_tty ? spawn_clone(sp, &pid) : spawn_plain(sp, &pid);
    if (pid > 0)
        mark_started(c, pid, timeout_ms);
    if (e == 0) {
        pthread_cond_broadcast(&xd.cond);
        pthread_mutex_unlock(&xd.lock);
        return 0;
    }
    snprintf(err, errlen, "fork/exec %s: %s", sp->argv[0], strerror(e));
    if (pid <= 0) {
        pthread_mutex_unlock(&xd.lock);
        xd_cmd_fail(c, err);
        return -1;
    }
    /* The child failed before exec: the reaper collects its 127. */
    c->start_failed = true;
    if (!c->running)
        c->exit_code = 255;
    snprintf(c->error, sizeof(c->error), "%s", err);
    pthread_mutex_unlock(&xd.lock);
    return -1;
}

void xd_cmd_fail(xd_cmd *c, const char *err)
{
    pthread_mutex_lock(&xd.lock);
    c->start_failed = true;
    c->running = false;
    c->pid = -1;
    c->exit_code = 255;
    c->finished_ms = moat_time_now_ms();
    c->expire_ns = now_ns() + xd.cfg.retention_ns;
    snprintf(c->error, sizeof(c->error), "%s", err);
    ssize_t w = write(c->notify_w, "x", 1);
    (void)w;
    pthread_mutex_unlock(&xd.lock);
}

void xd_cmd_terminate(xd_cmd *c, uint64_t grace_ms)
{
    pthread_mutex_lock(&xd.lock);
    if (c->running && c->pid > 0) {
        kill(-c->pid, SIGTERM);
        uint64_t at = now_ns() + grace_ms * 1000000ull;
        if (c->kill_at_ns == 0 || at < c->kill_at_ns)
            c->kill_at_ns = at;
        pthread_cond_broadcast(&xd.cond);
    }
    pthread_mutex_unlock(&xd.lock);
}

void xd_cmd_interrupt(xd_cmd *c)
{
    pthread_mutex_lock(&xd.lock);
    pid_t pgid = c->pid;
    pthread_mutex_unlock(&xd.lock);
    if (pgid <= 0)
        return;
    kill(-pgid, SIGTERM);
    /* The group may outlive its leader (children that ignore the leader's end). */
    for (int i = 0; i < 60; i++) {
        if (kill(-pgid, 0) != 0 && errno == ESRCH)
            return;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(-pgid, SIGKILL);
}

void xd_terminate_all(uint64_t grace_ms)
{
    pthread_mutex_lock(&xd.lock);
    for (xd_cmd *c = xd.cmds; c != NULL; c = c->next)
        if (c->running && c->pid > 0)
            kill(-c->pid, SIGTERM);
    uint64_t deadline = now_ns() + grace_ms * 1000000ull;
    for (;;) {
        bool any = false;
        for (xd_cmd *c = xd.cmds; c != NULL; c = c->next)
            any = any || (c->running && c->pid > 0);
        if (!any || now_ns() >= deadline)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&xd.cond, &xd.lock, &ts);
    }
    for (xd_cmd *c = xd.cmds; c != NULL; c = c->next)
        if (c->running && c->pid > 0)
            kill(-c->pid, SIGKILL);
    pthread_mutex_unlock(&xd.lock);
}

/* ---- signal thread: reaping and SIGTERM ---- */

static int shutdown_fd = -1;
static pthread_t signal_thread, housekeeping_thread;
/* Set (under xd.lock) when execd exits: both threads return and are joined. */
static bool threads_stop;

static bool stopping(void)
{
    pthread_mutex_lock(&xd.lock);
    bool stop = threads_stop;
    pthread_mutex_unlock(&xd.lock);
    return stop;
}

static void *signal_main(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    while (!stopping()) {
        struct timespec ts = {1, 0};
        int sig = sigtimedwait(&set, NULL, &ts);
        /* Reap on every wake-up too: a SIGCHLD may be merged or arrive before the mask. */
        reap_all();
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGQUIT) {
            if (!atomic_exchange(&xd.shutting_down, true)) {
                ssize_t w = write(shutdown_fd, "x", 1);
                (void)w;
            }
        }
    }
    return NULL;
}

void xd_signal_thread_start(int fd)
{
    shutdown_fd = fd;
    pthread_create(&signal_thread, NULL, signal_main, NULL);
}

/* Lock held. Whether c's process group id now leads another running command: a
 * finished command's pid is free for reuse once its group has no member left. */
static bool group_reused(const xd_cmd *c)
{
    for (const xd_cmd *o = xd.cmds; o != NULL; o = o->next)
        if (o != c && o->running && o->pid == c->pid)
            return true;
    return false;
}

static void *housekeeping_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&xd.lock);
    while (!threads_stop) {
        uint64_t now = now_ns();
        uint64_t next = now + 1000000000ull;
        for (xd_cmd *c = xd.cmds; c != NULL; c = c->next) {
            if (c->pid <= 0)
                continue;
            /* The timeout bounds the command's whole process group: what it left
             * behind (a fork bomb's children) is killed at the deadline even when
             * the command itself ended first. */
            if (c->deadline_ns != 0) {
                if (now >= c->deadline_ns) {
                    c->deadline_ns = 0;
                    c->timed_out = c->running;
                    if (c->running || !group_reused(c))
                        kill(-c->pid, SIGKILL);
                } else if (c->deadline_ns < next) {
                    next = c->deadline_ns;
                }
            }
            if (!c->running)
                continue;
            if (c->kill_at_ns != 0) {
                if (now >= c->kill_at_ns) {
                    kill(-c->pid, SIGKILL);
                    c->kill_at_ns = 0;
                } else if (c->kill_at_ns < next) {
                    next = c->kill_at_ns;
                }
            }
        }
        table_prune(false);
        struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
        pthread_cond_timedwait(&xd.cond, &xd.lock, &ts);
    }
    pthread_mutex_unlock(&xd.lock);
    return NULL;
}

void xd_housekeeping_start(void)
{
    pthread_create(&housekeeping_thread, NULL, housekeeping_main, NULL);
}

void xd_threads_stop(void)
{
    pthread_mutex_lock(&xd.lock);
    threads_stop = true;
    pthread_cond_broadcast(&xd.cond);
    pthread_mutex_unlock(&xd.lock);
    /* SIGCHLD is blocked everywhere and waited for by the signal thread alone:
     * sent to it, it ends its wait at once. */
    pthread_kill(signal_thread, SIGCHLD);
    pthread_join(signal_thread, NULL);
    pthread_join(housekeeping_thread, NULL);
}

/* ---- environment ---- */

static size_t env_len(char *const *env)
{
    size_t n = 0;
    while (env != NULL && env[n] != NULL)
        n++;
    return n;
}

void xd_env_free(char **env)
{
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        free(env[i]);
    free(env);
}

char **xd_env_dup(char *const *env)
{
    size_t n = env_len(env);
    char **out = calloc(n + 1, sizeof(*out));
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(env[i]);
        if (out[i] == NULL) {
            xd_env_free(out);
            return NULL;
        }
    }
    return out;
}

const char *xd_env_get(char *const *env, const char *name)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        if (strncmp(env[i], name, nlen) == 0 && env[i][nlen] == '=')
            return env[i] + nlen + 1;
    return NULL;
}

char **xd_env_set(char **env, const char *name, size_t nlen, const char *value, size_t vlen)
{
    char *kv = malloc(nlen + vlen + 2);
    if (kv == NULL)
        return env;
    memcpy(kv, name, nlen);
    kv[nlen] = '=';
    memcpy(kv + nlen + 1, value, vlen);
    kv[nlen + 1 + vlen] = '\0';
    size_t n = env_len(env);
    for (size_t i = 0; i < n; i++) {
        if (strncmp(env[i], name, nlen) == 0 && env[i][nlen] == '=') {
            free(env[i]);
            env[i] = kv;
            return env;
        }
    }
    char **grown = realloc(env, (n + 2) * sizeof(*env));
    if (grown == NULL) {
        free(kv);
        return env;
    }
    grown[n] = kv;
    grown[n + 1] = NULL;
    return grown;
}

static const char *getenv_lookup(void *ud, const char *name)
{
    (void)ud;
    return getenv(name);
}

/* EXECD_ENVS: KEY=VALUE lines, '#' comments, values expanded (undefined → empty). */
static char **apply_envs_file(char **env)
{
    const char *path = getenv("EXECD_ENVS");
    if (path == NULL || path[0] == '\0')
        return env;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return env;
    char line[8192];
    while (fgets(line, sizeof(line), f) != NULL) {
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        char *eq = strchr(p, '=');
        if (eq == NULL || eq == p)
            continue;
        *eq = '\0';
        char *val = NULL, errbuf[128];
        if (moat_execd_expand_path(eq + 1, NULL, getenv_lookup, NULL, &val, errbuf,
                                   sizeof(errbuf)) != MOAT_OK)
            val = strdup(eq + 1);
        if (val != NULL)
            env = xd_env_set(env, p, strlen(p), val, strlen(val));
        free(val);
    }
    fclose(f);
    return env;
}

char **xd_env_build(char *const *base, const cJSON *overrides)
{
    char **env = xd_env_dup(base != NULL ? base : environ);
    if (env == NULL)
        return NULL;
    if (base == NULL)
        env = apply_envs_file(env);
    const cJSON *v;
    cJSON_ArrayForEach(v, overrides)
    {
        if (cJSON_IsString(v))
            env = xd_env_set(env, v->string, strlen(v->string), v->valuestring,
                             strlen(v->valuestring));
    }
    return env;
}
