/* Failed hellos per source address: a token bucket per IPv4 /32 or IPv6 /128 in a table of
 * fixed size, so neither a flood from one address nor one from many addresses grows memory.
 * No I/O and no clock of its own (the caller passes now_ms): testable alone. Loop thread only. */
#ifndef MOAT_SERVER_THROTTLE_H
#define MOAT_SERVER_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>

#define MOAT_THROTTLE_SLOTS     4096 /* addresses remembered at once */
#define MOAT_THROTTLE_BURST     10   /* failed hellos an address may make in a row */
#define MOAT_THROTTLE_REFILL_MS 1000 /* then one more each this often */

/* An IPv6 address, or an IPv4 one mapped into it (::ffff:a.b.c.d). */
typedef struct moat_throttle_addr {
    uint8_t b[16];
} moat_throttle_addr;

typedef struct moat_throttle moat_throttle;

/* seed keys the table's hash, so an attacker cannot pick addresses that share a slot.
 * NULL when out of memory; free with moat_throttle_free. */
moat_throttle *moat_throttle_new(uint64_t seed);
void moat_throttle_free(moat_throttle *t);
/* Whether addr may try a hello now (its bucket holds a whole token). */
bool moat_throttle_allows(moat_throttle *t, const moat_throttle_addr *addr, uint64_t now_ms);
/* addr failed a hello: takes one token from its bucket. */
void moat_throttle_charge(moat_throttle *t, const moat_throttle_addr *addr, uint64_t now_ms);
/* Milliseconds until addr may try again (0 when it may now). */
uint64_t moat_throttle_retry_ms(moat_throttle *t, const moat_throttle_addr *addr, uint64_t now_ms);

#endif
