/* Byte slices: C strings as slices, comparing one with a C string, copying one out. */
#include <string.h>

#include "moat/common.h"

moat_slice moat_slice_str(const char *s)
{
    moat_slice out = {(const uint8_t *)s, s ? strlen(s) : 0};
    return out;
}

bool moat_slice_eq_str(moat_slice s, const char *str)
{
    size_t n = strlen(str);
    return s.len == n && (n == 0 || memcmp(s.data, str, n) == 0);
}

size_t moat_slice_copy(moat_slice s, char *out, size_t cap)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n)
        memcpy(out, s.data, n);
    out[n] = '\0';
    return s.len;
}
