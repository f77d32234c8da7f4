/* libFuzzer target: the etcd gateway's answers, a watch stream's message and the node record.
 * The first byte picks the call whose answer the rest is (7: a watch message; 8 and up: a node
 * record's value), its high bit a non-2xx status. Seeds: etcd_corpus/, answers etcd 3.4.23
 * gave. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cluster/membership.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned pick = data[0] & 0x7f;
    long http = data[0] & 0x80 ? 503 : 200;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    if (pick <= MOAT_ETCD_CALL_LEASE_REVOKE) {
        moat_etcd_result res;
        moat_status st;
        memset(&res, 0, sizeof(res));
        moat_etcd_parse((moat_etcd_call)pick, http, body, len, &res, &st);
        moat_etcd_result_free(&res);
    } else if (pick == MOAT_ETCD_CALL_WATCH) {
        moat_etcd_watch_msg m;
        moat_status st;
        memset(&m, 0, sizeof(m));
        moat_etcd_parse_watch(body, len, &m, &st);
        moat_etcd_watch_msg_free(&m);
    } else {
        static const char key[] = MOAT_NODES_PREFIX "node-1";
        moat_node node;
        moat_node_decode((const uint8_t *)key, strlen(key), (const uint8_t *)body, len, 1, &node);
    }
    return 0;
}
