/*
 * scope.h — mandate scopes: what a mandate allows, as four sets (tools, lanes,
 * resources, classes). Pure functions over values, no storage: parse and render the
 * JSON form, compare, test containment (delegation, narrowing), intersect (clipping a
 * descendant to a narrowed ancestor), and decide one action (the hot path of every
 * check).
 *
 * Matching rules: tools and lanes are names, matched exactly. A resource entry is an
 * exact string, or a prefix pattern ending in '*' ("repo:web*" covers "repo:web",
 * "repo:web/src/a.ts" and "repo:web/x*"); "*" alone covers everything; '*' anywhere
 * but last is invalid. Classes are the four bits below. An empty set allows
 * nothing of its kind.
 */
#ifndef CHARTER_MANDATES_SCOPE_H
#define CHARTER_MANDATES_SCOPE_H

#include <stdbool.h>
#include <stdint.h>

#include "charter.h"

enum {
    CH__CLASS_READ = 1,
    CH__CLASS_WRITE = 2,
    CH__CLASS_EXTERNAL = 4,
    CH__CLASS_IRREVERSIBLE = 8
};

/* A set of strings: sorted by strcmp, unique, each string and the array malloc'd. */
typedef struct ch__strset {
    char **v;
    uint32_t n;
} ch__strset;

/* One prefix pattern of a scope's resources, without its '*': s points into the
 * resources entry it comes from (borrowed), len is that entry's length - 1. */
typedef struct ch__prefix {
    const char *s;
    uint32_t len;
} ch__prefix;

/* A scope. tools, lanes, resources and classes are the value. prefixes/nprefixes is
 * an index derived from resources (never set it by hand): the prefix patterns that
 * no other pattern covers, sorted, so that no entry is a prefix of another. In such
 * a set the only candidate prefix of a string r is the greatest entry <= r, which
 * makes the prefix match one binary search. It borrows the resources strings, so a
 * shallow struct copy (a move) keeps it valid; it is rebuilt by ch__scope_parse,
 * ch__scope_copy and ch__scope_clip, and freed by ch__scope_free. A zeroed scope is
 * valid and empty. */
typedef struct ch__scope {
    ch__strset tools, lanes, resources;
    unsigned classes;
    ch__prefix *prefixes;
    uint32_t nprefixes;
} ch__scope;

/* Class name ("read") → bit; 0 when unknown. */
unsigned ch__class_parse(const char *name);
/* Class bit → name; NULL unless bit is exactly one of the four bits. */
const char *ch__class_name(unsigned bit);

/* Parses a scope object j into out. Allowed keys: tools, lanes, resources, classes
 * (any other → CH_UNKNOWN_FIELD naming "<field>.xyz"). Each is optional: absent or
 * null is the empty list, except that when base is not NULL (PATCH) a list absent
 * from j is copied from base (an explicit null still means empty). Each must be an
 * array (else CH_INVALID_TYPE, "<field>.tools") of at most 1024 entries (else
 * CH_INVALID_VALUE, "<field>.tools") of strings (else CH_INVALID_TYPE,
 * "<field>.tools[3]") of 1..256 bytes without NUL (else CH_INVALID_VALUE,
 * "<field>.tools[3]"). Resources may hold '*' only as their last character, class
 * names must be known (CH_INVALID_VALUE, "<field>.resources[2]" /
 * "<field>.classes[1]"). Duplicates are removed. j not an object → CH_INVALID_TYPE,
 * "<field>". field is the prefix to use, normally "scope". On error out is left empty
 * (nothing to free) and e is filled; CH_NOMEM when memory runs out. */
ch_status ch__scope_parse(const json_t *j, const char *field, const ch__scope *base, ch__scope *out,
                          ch_err *e);

/* The JSON form {"tools":[...],"lanes":[...],"resources":[...],"classes":[...]}: lists
 * sorted, classes in the order read, write, external, irreversible. A new reference,
 * or NULL when memory runs out. */
json_t *ch__scope_json(const ch__scope *s);

/* Deep copy of s into out (which need not be initialized). CH_NOMEM on failure, with
 * out left empty. */
ch_status ch__scope_copy(const ch__scope *s, ch__scope *out);

/* Frees what s holds and leaves it empty; safe to call twice. */
void ch__scope_free(ch__scope *s);

/* True when a and b hold the same four sets. */
bool ch__scope_equal(const ch__scope *a, const ch__scope *b);

/* Is child ⊆ parent? CH_OK, or CH_NOT_SUBSET with e's field "<field>.tools",
 * "<field>.lanes", "<field>.resources" or "<field>.classes" (the first failing, in that
 * order) and a message naming the offending entry (`tool "deploy" is not in the
 * parent's scope`). A resource pattern p lies inside q when q is exact and p == q, or q
 * is X* and p (exact or a pattern) starts with X. Cost O(n log m) for n child and m
 * parent entries. */
ch_status ch__scope_subset(const ch__scope *child, const ch__scope *parent, const char *field,
                           ch_err *e);

/* s := s ∩ bound. tools, lanes and classes are intersected. A resource pattern of s is
 * kept when it lies inside a pattern of bound; otherwise it is replaced by the patterns
 * of bound that lie inside it (a narrower "repo:web/src*" in bound replaces
 * "repo:web*"), or dropped when there are none. The result is sorted and unique, and
 * clipping it again by bound changes nothing. *changed (if not NULL) tells whether s
 * changed. Errors leave s as it was and *changed false; the caller must not treat them
 * as "nothing to narrow": CH_NOMEM, or CH_INVALID_VALUE when the intersection needs
 * more than 1024 resource entries (possible: {"a*", z1..z1000} ∩ {"z*", a1..a1000}
 * holds all 2000 exact entries), which no scope may hold. */
ch_status ch__scope_clip(ch__scope *s, const ch__scope *bound, bool *changed);

typedef enum ch__verdict {
    CH__ALLOW,
    CH__TOOL_OUT,
    CH__LANE_OUT,
    CH__RESOURCE_OUT,
    CH__CLASS_OUT
} ch__verdict;

/* Is the action inside s? Checked in the order tool, lane, resource, class; the first
 * that fails gives the verdict. cls is a single class bit (0, an unknown bit or
 * several bits → CH__CLASS_OUT); a NULL string is outside every set. No allocation:
 * binary searches over tools, lanes, the exact resources and the prefix index, so
 * O(log n) string comparisons per set. */
ch__verdict ch__scope_allows(const ch__scope *s, const char *tool, const char *lane,
                             const char *resource, unsigned cls);

#endif /* CHARTER_MANDATES_SCOPE_H */
