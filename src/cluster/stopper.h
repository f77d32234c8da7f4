/* What the cluster module's threads wait with: a pause that a stop cuts short. */
#ifndef MOAT_CLUSTER_STOPPER_H
#define MOAT_CLUSTER_STOPPER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct moat_stopper {
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cond;
} moat_stopper;

void moat__stopper_init(moat_stopper *s);
void moat__stopper_destroy(moat_stopper *s);
/* Waits ms, or less once stopped; false once stopping. */
bool moat__stopper_wait_ms(moat_stopper *s, int64_t ms);
/* Sets the flag and wakes the waiter. */
void moat__stopper_stop(moat_stopper *s);

#endif
