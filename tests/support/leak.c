/* Preloaded by tests/meta/meta_test.sh into a program under valgrind: a block lost before main,
 * which memcheck must report as a definite leak. */
#include <stdlib.h>
#include <string.h>

__attribute__((constructor)) static void lose_a_block(void)
{
    void *volatile block = malloc(64);
    memset(block, 1, 64);
    block = NULL;
}
