/*
 * metrics.c — the growable buffer used to build replies, and lock-free histograms
 * rendered in the Prometheus text format.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "charter.h"

const double ch_hist_latency_bounds[CH_HIST_BUCKETS] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   1.0 / 0.0};
const double ch_hist_size_bounds[CH_HIST_BUCKETS] = {1,   2,   4,    8,    16,   32,   64,   128,
                                                     256, 512, 1024, 2048, 4096, 8192, 16384,
                                                     1.0 / 0.0};

void ch_buf_append(ch_buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            abort(); /* reply buffers are small; there is no sane way to continue */
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void ch_buf_printf(ch_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(small)) {
        ch_buf_append(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL)
        abort();
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    ch_buf_append(b, big, (size_t)n);
    free(big);
}

void ch_buf_free(ch_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void ch_histogram_observe(ch_histogram *h, double v)
{
    int i = 0;
    while (i < CH_HIST_BUCKETS - 1 && v > h->bounds[i])
        i++;
    __atomic_fetch_add(&h->counts[i], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->count, 1, __ATOMIC_RELAXED);
    /* The sum is a double: update it with a compare-and-swap loop. */
    double old, want;
    __atomic_load(&h->sum, &old, __ATOMIC_RELAXED);
    do {
        want = old + v;
    } while (!__atomic_compare_exchange(&h->sum, &old, &want, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
}

void ch_histogram_render(const ch_histogram *h, const char *name, const char *labels,
                         ch_buf *out)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i < CH_HIST_BUCKETS; i++) {
        cum += __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
        if (i == CH_HIST_BUCKETS - 1)
            ch_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                          (unsigned long long)cum);
        else
            ch_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                          (unsigned long long)cum);
    }
    double sum;
    __atomic_load(&h->sum, &sum, __ATOMIC_RELAXED);
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    ch_buf_printf(out, "%s_sum%s%s%s %.9g\n", name, open, labels, close, sum);
    ch_buf_printf(out, "%s_count%s%s%s %llu\n", name, open, labels, close,
                  (unsigned long long)__atomic_load_n(&h->count, __ATOMIC_RELAXED));
}
