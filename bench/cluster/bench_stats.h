/* The clock and percentiles bench_follow and bench_follow_real share. */
#ifndef MOAT_BENCH_CLUSTER_STATS_H
#define MOAT_BENCH_CLUSTER_STATS_H

#include <stdlib.h>
#include <time.h>

static inline double bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The p-th quantile (0..1) of v[0..n), n > 0; sorts v. */
static inline double bench_percentile(double *v, int n, double p)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return v[(int)(p * (n - 1))];
}

#endif
