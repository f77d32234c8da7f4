/* Per-stream flow-control credit. */
#include "wire/wire.h"

void moat_window_init(moat_window *w, uint32_t initial)
{
    if (initial > MOAT_WIRE_MAX_WINDOW)
        initial = MOAT_WIRE_MAX_WINDOW;
    w->available = initial;
    w->pending_grant = 0;
    w->initial = initial;
}

moat_err moat_window_consume(moat_window *w, uint32_t n)
{
    if (n > w->available)
        return MOAT_E_WINDOW;
    w->available -= n;
    return MOAT_OK;
}

moat_err moat_window_grant(moat_window *w, uint32_t increment)
{
    if (increment == 0 || increment > MOAT_WIRE_MAX_WINDOW - w->available)
        return MOAT_E_WINDOW;
    w->available += increment;
    return MOAT_OK;
}

uint32_t moat_window_release(moat_window *w, uint32_t n)
{
    /* Never grant past the ceiling, whatever the application reports. */
    uint32_t room = MOAT_WIRE_MAX_WINDOW - w->available;
    uint64_t sum = (uint64_t)w->pending_grant + n;
    uint32_t pending = sum > room ? room : (uint32_t)sum;
    w->pending_grant = pending;
    /* Batch small releases: one update per half window keeps control traffic low. */
    if (pending == 0 || pending < w->initial / 2)
        return 0;
    w->available += pending;
    w->pending_grant = 0;
    return pending;
}
