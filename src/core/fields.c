/*
 * fields.c — validation of request fields, shared by every operation so that the
 * same mistake always yields the same error: unknown_field, missing_field,
 * invalid_type or invalid_value, with the offending field named.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static void path(char *out, size_t n, const char *prefix, const char *name)
{
    snprintf(out, n, "%s%s", prefix ? prefix : "", name);
}

ch_status ch__fields_known(const json_t *obj, const char *prefix, const char *const allowed[],
                           ch_err *e)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (int i = 0; allowed[i] != NULL && !ok; i++)
            ok = strcmp(k, allowed[i]) == 0;
        if (!ok) {
            char f[128];
            path(f, sizeof(f), prefix, k);
            return ch_err_set(e, CH_UNKNOWN_FIELD, f, "unknown field '%s'", f);
        }
    }
    return CH_OK;
}

ch_status ch__field_string(const json_t *obj, const char *prefix, const char *name,
                           bool required, size_t max, const char **out, ch_err *e)
{
    char f[128];
    json_t *v = json_object_get(obj, name);
    path(f, sizeof(f), prefix, name);
    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        if (required)
            return ch_err_set(e, CH_MISSING_FIELD, f, "'%s' is required", f);
        return CH_OK;
    }
    if (!json_is_string(v))
        return ch_err_set(e, CH_INVALID_TYPE, f, "'%s' must be a string", f);
    size_t len = json_string_length(v);
    if (len == 0 || len > max)
        return ch_err_set(e, CH_INVALID_VALUE, f, "'%s' must be 1 to %zu bytes", f, max);
    if (strlen(json_string_value(v)) != len)
        return ch_err_set(e, CH_INVALID_VALUE, f, "'%s' must not contain NUL", f);
    *out = json_string_value(v);
    return CH_OK;
}

ch_status ch__field_int(const json_t *obj, const char *prefix, const char *name, bool required,
                        int64_t min, int64_t max, int64_t *out, bool *present, ch_err *e)
{
    char f[128];
    json_t *v = json_object_get(obj, name);
    path(f, sizeof(f), prefix, name);
    if (present)
        *present = false;
    if (v == NULL) {
        if (required)
            return ch_err_set(e, CH_MISSING_FIELD, f, "'%s' is required", f);
        return CH_OK;
    }
    if (!json_is_integer(v))
        return ch_err_set(e, CH_INVALID_TYPE, f, "'%s' must be an integer", f);
    json_int_t n = json_integer_value(v);
    if (n < min || n > max)
        return ch_err_set(e, CH_INVALID_VALUE, f, "'%s' must be between %lld and %lld", f,
                          (long long)min, (long long)max);
    *out = n;
    if (present)
        *present = true;
    return CH_OK;
}

ch_status ch__field_number(const json_t *obj, const char *prefix, const char *name, double min,
                           double max, double *out, bool *present, ch_err *e)
{
    char f[128];
    json_t *v = json_object_get(obj, name);
    path(f, sizeof(f), prefix, name);
    *present = false;
    if (v == NULL)
        return CH_OK;
    if (!json_is_number(v))
        return ch_err_set(e, CH_INVALID_TYPE, f, "'%s' must be a number", f);
    double d = json_number_value(v);
    if (!isfinite(d) || d < min || d > max)
        return ch_err_set(e, CH_INVALID_VALUE, f, "'%s' must be between %g and %g", f, min, max);
    *out = d;
    *present = true;
    return CH_OK;
}

ch_status ch__field_object(const json_t *obj, const char *prefix, const char *name,
                           json_t **out, ch_err *e)
{
    char f[128];
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return CH_OK;
    if (!json_is_object(v)) {
        path(f, sizeof(f), prefix, name);
        return ch_err_set(e, CH_INVALID_TYPE, f, "'%s' must be an object", f);
    }
    *out = v;
    return CH_OK;
}
