/* The pre-authentication attack of issue #12, as processes of its own: silent connections that
 * never send a hello (reconnecting whenever moatd closes one) from one loopback address, and
 * hellos with a wrong token, back to back, from another. */
#ifndef MOAT_CHAOS_ATTACK_H
#define MOAT_CHAOS_ATTACK_H

#include <sys/types.h>

typedef struct attack {
    pid_t silent_pid;
    pid_t hellos_pid;
    int counts_fd; /* the hello process writes its running count of attempts here */
    int reconnect_ms;
} attack;

/* Starts both against 127.0.0.1:port: `silent` connections from silent_src, failed hellos from
 * hello_src. A silent connection moatd closed comes back reconnect_ms after it was opened (the
 * issue's attacker: 10,000), or at once with 0 (as fast as the attacker's CPU allows). Returns 0,
 * or -1 (nothing left running). The children die with the caller. */
int attack_start(attack *a, int port, int silent, int reconnect_ms, const char *silent_src,
                 const char *hello_src);
/* Failed hellos attempted so far (reads what the hello process reported). */
long long attack_hellos(attack *a);
/* Kills both (by their pids) and reaps them; safe to call twice. */
void attack_stop(attack *a);

#endif
