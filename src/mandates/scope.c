/*
 * scope.c — mandate scopes (see scope.h): parsing and rendering, containment,
 * clipping and the per-action decision. Sets are kept sorted and unique so that
 * membership is a binary search and comparisons are merges; resource prefix patterns
 * also live in a derived prefix-free index so that a prefix match is one binary
 * search too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mandates/scope.h"

#define LIST_MAX 1024
#define ENTRY_MAX 256 /* bytes; the messages say so too */

static const char *const class_names[] = {"read", "write", "external", "irreversible"};

unsigned ch__class_parse(const char *name)
{
    if (name == NULL)
        return 0;
    for (unsigned i = 0; i < 4; i++) {
        if (strcmp(name, class_names[i]) == 0)
            return 1u << i;
    }
    return 0;
}

const char *ch__class_name(unsigned bit)
{
    switch (bit) {
    case CH__CLASS_READ:
        return class_names[0];
    case CH__CLASS_WRITE:
        return class_names[1];
    case CH__CLASS_EXTERNAL:
        return class_names[2];
    case CH__CLASS_IRREVERSIBLE:
        return class_names[3];
    default:
        return NULL;
    }
}

/* ---- string sets ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void strset_free(ch__strset *s)
{
    for (uint32_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

/* Index of the first entry >= x (s->n when none). */
static uint32_t strset_lower(const ch__strset *s, const char *x)
{
    uint32_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->v[mid], x) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool strset_has(const ch__strset *s, const char *x)
{
    uint32_t i = strset_lower(s, x);
    return i < s->n && strcmp(s->v[i], x) == 0;
}

static bool strset_equal(const ch__strset *a, const ch__strset *b)
{
    if (a->n != b->n)
        return false;
    for (uint32_t i = 0; i < a->n; i++) {
        if (strcmp(a->v[i], b->v[i]) != 0)
            return false;
    }
    return true;
}

static ch_status strset_copy(const ch__strset *s, ch__strset *out)
{
    out->v = NULL;
    out->n = 0;
    if (s->n == 0)
        return CH_OK;
    out->v = malloc(s->n * sizeof(char *));
    if (out->v == NULL)
        return CH_NOMEM;
    for (uint32_t i = 0; i < s->n; i++) {
        out->v[i] = strdup(s->v[i]);
        if (out->v[i] == NULL) {
            strset_free(out);
            return CH_NOMEM;
        }
        out->n++;
    }
    return CH_OK;
}

/* Sorts s and frees its duplicates. */
static void strset_normalize(ch__strset *s)
{
    uint32_t w = 0;
    if (s->n < 2)
        return;
    qsort(s->v, s->n, sizeof(char *), cmp_str);
    for (uint32_t r = 1; r < s->n; r++) {
        if (strcmp(s->v[r], s->v[w]) == 0)
            free(s->v[r]);
        else
            s->v[++w] = s->v[r];
    }
    s->n = w + 1;
}

/* Appends a copy of x to s, which has room (the caller sized it). */
static ch_status strset_push(ch__strset *s, const char *x)
{
    char *d = strdup(x);
    if (d == NULL)
        return CH_NOMEM;
    s->v[s->n++] = d;
    return CH_OK;
}

/* out := a ∩ b, by merging the two sorted sets. */
static ch_status strset_intersect(const ch__strset *a, const ch__strset *b, ch__strset *out)
{
    uint32_t i = 0, j = 0, cap = a->n < b->n ? a->n : b->n;
    out->v = NULL;
    out->n = 0;
    if (cap == 0)
        return CH_OK;
    out->v = malloc(cap * sizeof(char *));
    if (out->v == NULL)
        return CH_NOMEM;
    while (i < a->n && j < b->n) {
        int c = strcmp(a->v[i], b->v[j]);
        if (c < 0) {
            i++;
        } else if (c > 0) {
            j++;
        } else {
            if (strset_push(out, a->v[i]) != CH_OK) {
                strset_free(out);
                return CH_NOMEM;
            }
            i++;
            j++;
        }
    }
    return CH_OK;
}

/* ---- the resource prefix index ---- */

static bool is_pattern(const char *r)
{
    size_t n = strlen(r);
    return n > 0 && r[n - 1] == '*';
}

/* Lexicographic order of the prefixes (bytes as unsigned, a prefix before its
 * extensions): the order strncmp(p, r, p.len) is consistent with. */
static int cmp_prefix(const void *a, const void *b)
{
    const ch__prefix *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

/* Rebuilds s's prefix index from its resources: every pattern without its '*',
 * sorted, keeping only those no other pattern covers. Prefixes that start with a kept
 * prefix q follow q directly in sorted order, so one pass against the last kept entry
 * drops them all. */
static ch_status index_build(ch__scope *s)
{
    uint32_t n = 0, w = 0;
    free(s->prefixes);
    s->prefixes = NULL;
    s->nprefixes = 0;
    for (uint32_t i = 0; i < s->resources.n; i++)
        n += is_pattern(s->resources.v[i]);
    if (n == 0)
        return CH_OK;
    s->prefixes = malloc(n * sizeof(ch__prefix));
    if (s->prefixes == NULL)
        return CH_NOMEM;
    n = 0;
    for (uint32_t i = 0; i < s->resources.n; i++) {
        const char *r = s->resources.v[i];
        if (is_pattern(r))
            s->prefixes[n++] = (ch__prefix){r, (uint32_t)strlen(r) - 1};
    }
    qsort(s->prefixes, n, sizeof(ch__prefix), cmp_prefix);
    for (uint32_t r = 1; r < n; r++) {
        const ch__prefix *q = &s->prefixes[w], *p = &s->prefixes[r];
        if (!(p->len >= q->len && memcmp(p->s, q->s, q->len) == 0))
            s->prefixes[++w] = *p;
    }
    s->nprefixes = w + 1;
    return CH_OK;
}

/* Does s's resources cover r (an action's resource, or a pattern "X*" of another
 * scope, which lies inside a pattern when it starts with its prefix)? An exact entry
 * equal to r, or a prefix of r. The index is prefix-free, so if a prefix of r is in
 * it, it is the greatest entry <= r: for any entry q with p < q <= r, p would have to
 * be a prefix of q. */
static bool covered(const ch__scope *s, const char *r)
{
    uint32_t lo = 0, hi = s->nprefixes;
    if (strset_has(&s->resources, r))
        return true;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strncmp(s->prefixes[mid].s, r, s->prefixes[mid].len);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* ---- parsing and rendering ---- */

enum list_kind { LIST_NAMES, LIST_RESOURCES, LIST_CLASSES };

/* Fails for entry i of list f: the field is "f[i]" and the message "'f[i]' what". The
 * name is only built here, so valid entries cost no formatting. */
static ch_status entry_fail(ch_err *e, ch_status st, const char *f, size_t i, const char *what)
{
    char fi[160];
    snprintf(fi, sizeof(fi), "%s[%zu]", f, i);
    return ch_err_set(e, st, fi, "'%s' %s", fi, what);
}

/* One list of a scope object: into out (names, resources) or *classes. When the list is
 * absent and from/from_classes are given (PATCH), it is copied from them instead. */
static ch_status parse_list(const json_t *j, const char *field, const char *name,
                            enum list_kind kind, const ch__strset *from,
                            const unsigned *from_classes, ch__strset *out, unsigned *classes,
                            ch_err *e)
{
    char f[128];
    json_t *a = json_object_get(j, name), *x;
    size_t i;

    snprintf(f, sizeof(f), "%s.%s", field, name);
    if (a == NULL && from_classes != NULL) {
        *classes = *from_classes;
        return CH_OK;
    }
    if (a == NULL && from != NULL) {
        if (strset_copy(from, out) != CH_OK)
            return ch_err_set(e, CH_NOMEM, NULL, NULL);
        return CH_OK;
    }
    if (a == NULL || json_is_null(a))
        return CH_OK;
    if (!json_is_array(a))
        return ch_err_set(e, CH_INVALID_TYPE, f, "'%s' must be an array of strings", f);
    if (json_array_size(a) > LIST_MAX)
        return ch_err_set(e, CH_INVALID_VALUE, f, "'%s' holds at most %d entries", f, LIST_MAX);
    if (kind != LIST_CLASSES && json_array_size(a) > 0) {
        out->v = malloc(json_array_size(a) * sizeof(char *));
        if (out->v == NULL)
            return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    json_array_foreach(a, i, x)
    {
        if (!json_is_string(x))
            return entry_fail(e, CH_INVALID_TYPE, f, i, "must be a string");
        const char *s = json_string_value(x);
        size_t len = json_string_length(x);
        if (len == 0 || len > ENTRY_MAX || strlen(s) != len)
            return entry_fail(e, CH_INVALID_VALUE, f, i, "must be 1 to 256 bytes without NUL");
        if (kind == LIST_CLASSES) {
            unsigned bit = ch__class_parse(s);
            if (bit == 0)
                return entry_fail(e, CH_INVALID_VALUE, f, i,
                                  "must be one of read, write, external, irreversible");
            *classes |= bit;
            continue;
        }
        if (kind == LIST_RESOURCES && memchr(s, '*', len - 1) != NULL)
            return entry_fail(e, CH_INVALID_VALUE, f, i,
                              "may hold '*' only as its last character (a prefix pattern)");
        if (strset_push(out, s) != CH_OK)
            return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    if (out != NULL)
        strset_normalize(out);
    return CH_OK;
}

ch_status ch__scope_parse(const json_t *j, const char *field, const ch__scope *base, ch__scope *out,
                          ch_err *e)
{
    static const char *const keys[] = {"tools", "lanes", "resources", "classes", NULL};
    ch__scope s = {0};
    char prefix[128];
    ch_status st;

    memset(out, 0, sizeof(*out));
    if (field == NULL)
        field = "scope";
    if (!json_is_object(j))
        return ch_err_set(e, CH_INVALID_TYPE, field, "'%s' must be an object", field);
    snprintf(prefix, sizeof(prefix), "%s.", field);
    st = ch__fields_known(j, prefix, keys, e);
    if (st != CH_OK)
        return st;
    st = parse_list(j, field, "tools", LIST_NAMES, base ? &base->tools : NULL, NULL, &s.tools, NULL,
                    e);
    if (st != CH_OK)
        goto fail;
    st = parse_list(j, field, "lanes", LIST_NAMES, base ? &base->lanes : NULL, NULL, &s.lanes, NULL,
                    e);
    if (st != CH_OK)
        goto fail;
    st = parse_list(j, field, "resources", LIST_RESOURCES, base ? &base->resources : NULL, NULL,
                    &s.resources, NULL, e);
    if (st != CH_OK)
        goto fail;
    st = parse_list(j, field, "classes", LIST_CLASSES, NULL, base ? &base->classes : NULL, NULL,
                    &s.classes, e);
    if (st != CH_OK)
        goto fail;
    if (index_build(&s) != CH_OK) {
        st = ch_err_set(e, CH_NOMEM, NULL, NULL);
        goto fail;
    }
    *out = s;
    return CH_OK;
fail:
    ch__scope_free(&s);
    return st;
}

static json_t *strset_json(const ch__strset *s)
{
    json_t *a = json_array();
    for (uint32_t i = 0; a != NULL && i < s->n; i++) {
        if (json_array_append_new(a, json_string(s->v[i])) != 0) {
            json_decref(a);
            a = NULL;
        }
    }
    return a;
}

json_t *ch__scope_json(const ch__scope *s)
{
    json_t *o = json_object(), *classes = json_array();
    if (o == NULL || classes == NULL ||
        json_object_set_new(o, "tools", strset_json(&s->tools)) != 0 ||
        json_object_set_new(o, "lanes", strset_json(&s->lanes)) != 0 ||
        json_object_set_new(o, "resources", strset_json(&s->resources)) != 0)
        goto fail;
    for (unsigned i = 0; i < 4; i++) {
        if ((s->classes & (1u << i)) &&
            json_array_append_new(classes, json_string(class_names[i])) != 0)
            goto fail;
    }
    if (json_object_set_new(o, "classes", classes) != 0) {
        classes = NULL; /* json_object_set_new released it */
        goto fail;
    }
    return o;
fail:
    json_decref(classes);
    json_decref(o);
    return NULL;
}

/* ---- copy, free, compare ---- */

ch_status ch__scope_copy(const ch__scope *s, ch__scope *out)
{
    ch__scope c = {0};
    memset(out, 0, sizeof(*out));
    if (strset_copy(&s->tools, &c.tools) != CH_OK || strset_copy(&s->lanes, &c.lanes) != CH_OK ||
        strset_copy(&s->resources, &c.resources) != CH_OK || index_build(&c) != CH_OK) {
        ch__scope_free(&c);
        return CH_NOMEM;
    }
    c.classes = s->classes;
    *out = c;
    return CH_OK;
}

void ch__scope_free(ch__scope *s)
{
    strset_free(&s->tools);
    strset_free(&s->lanes);
    strset_free(&s->resources);
    free(s->prefixes);
    s->prefixes = NULL;
    s->nprefixes = 0;
    s->classes = 0;
}

bool ch__scope_equal(const ch__scope *a, const ch__scope *b)
{
    return a->classes == b->classes && strset_equal(&a->tools, &b->tools) &&
           strset_equal(&a->lanes, &b->lanes) && strset_equal(&a->resources, &b->resources);
}

/* ---- containment and clipping ---- */

/* The first entry of child not in parent, or NULL. */
static const char *first_missing(const ch__strset *child, const ch__strset *parent)
{
    for (uint32_t i = 0; i < child->n; i++) {
        if (!strset_has(parent, child->v[i]))
            return child->v[i];
    }
    return NULL;
}

ch_status ch__scope_subset(const ch__scope *child, const ch__scope *parent, const char *field,
                           ch_err *e)
{
    char f[128];
    const char *miss;

    if (field == NULL)
        field = "scope";
    miss = first_missing(&child->tools, &parent->tools);
    if (miss != NULL) {
        snprintf(f, sizeof(f), "%s.tools", field);
        return ch_err_set(e, CH_NOT_SUBSET, f, "tool \"%s\" is not in the parent's scope", miss);
    }
    miss = first_missing(&child->lanes, &parent->lanes);
    if (miss != NULL) {
        snprintf(f, sizeof(f), "%s.lanes", field);
        return ch_err_set(e, CH_NOT_SUBSET, f, "lane \"%s\" is not in the parent's scope", miss);
    }
    for (uint32_t i = 0; i < child->resources.n; i++) {
        if (!covered(parent, child->resources.v[i])) {
            snprintf(f, sizeof(f), "%s.resources", field);
            return ch_err_set(e, CH_NOT_SUBSET, f,
                              "resource \"%s\" does not lie inside the parent's resources",
                              child->resources.v[i]);
        }
    }
    unsigned extra = child->classes & ~parent->classes;
    if (extra != 0) {
        const char *name = "unknown";
        for (unsigned i = 0; i < 4; i++) {
            if (extra & (1u << i)) {
                name = class_names[i];
                break;
            }
        }
        snprintf(f, sizeof(f), "%s.classes", field);
        return ch_err_set(e, CH_NOT_SUBSET, f, "class \"%s\" is not in the parent's scope", name);
    }
    return CH_OK;
}

/* Resources of s clipped to bound, into out (sorted, unique); CH_INVALID_VALUE when
 * that takes more than LIST_MAX entries. For a pattern "X*" of s
 * that no pattern of bound covers, the entries of bound inside it are those starting
 * with X: one contiguous run in bound's sorted order, from the first entry >= X. They
 * are marked in take rather than copied at once, so that the result never holds more
 * than the entries of s plus those of bound, however many patterns of s overlap. */
static ch_status clip_resources(const ch__scope *s, const ch__scope *bound, ch__strset *out)
{
    const ch__strset *b = &bound->resources;
    bool *take = NULL;
    out->v = NULL;
    out->n = 0;
    if (s->resources.n == 0)
        return CH_OK;
    out->v = malloc(((size_t)s->resources.n + b->n) * sizeof(char *));
    take = calloc(b->n + 1, sizeof(bool));
    if (out->v == NULL || take == NULL)
        goto nomem;
    for (uint32_t i = 0; i < s->resources.n; i++) {
        const char *p = s->resources.v[i];
        if (covered(bound, p)) {
            if (strset_push(out, p) != CH_OK)
                goto nomem;
            continue;
        }
        if (!is_pattern(p))
            continue;
        size_t xlen = strlen(p) - 1;
        uint32_t lo = 0, hi = b->n;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (strncmp(b->v[mid], p, xlen) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (uint32_t k = lo; k < b->n && strncmp(b->v[k], p, xlen) == 0; k++)
            take[k] = true;
    }
    for (uint32_t k = 0; k < b->n; k++) {
        if (take[k] && strset_push(out, b->v[k]) != CH_OK)
            goto nomem;
    }
    free(take);
    strset_normalize(out);
    if (out->n > LIST_MAX) {
        strset_free(out);
        return CH_INVALID_VALUE;
    }
    return CH_OK;
nomem:
    free(take);
    strset_free(out);
    return CH_NOMEM;
}

ch_status ch__scope_clip(ch__scope *s, const ch__scope *bound, bool *changed)
{
    ch__scope c = {0};
    ch_status st;

    if (changed != NULL)
        *changed = false;
    st = strset_intersect(&s->tools, &bound->tools, &c.tools);
    if (st == CH_OK)
        st = strset_intersect(&s->lanes, &bound->lanes, &c.lanes);
    if (st == CH_OK)
        st = clip_resources(s, bound, &c.resources);
    if (st == CH_OK)
        st = index_build(&c);
    if (st != CH_OK) {
        ch__scope_free(&c);
        return st;
    }
    c.classes = s->classes & bound->classes;
    if (ch__scope_equal(&c, s)) {
        ch__scope_free(&c);
        return CH_OK;
    }
    ch__scope_free(s);
    *s = c;
    if (changed != NULL)
        *changed = true;
    return CH_OK;
}

/* ---- the decision ---- */

ch__verdict ch__scope_allows(const ch__scope *s, const char *tool, const char *lane,
                             const char *resource, unsigned cls)
{
    if (tool == NULL || !strset_has(&s->tools, tool))
        return CH__TOOL_OUT;
    if (lane == NULL || !strset_has(&s->lanes, lane))
        return CH__LANE_OUT;
    if (resource == NULL || !covered(s, resource))
        return CH__RESOURCE_OUT;
    if (cls == 0 || (cls & (cls - 1)) != 0 || (cls & s->classes & 15u) == 0)
        return CH__CLASS_OUT;
    return CH__ALLOW;
}
