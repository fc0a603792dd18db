/*
 * metrics.c — request counters and latency histograms per route and status, updated
 * with relaxed atomics from every loop thread and rendered as Prometheus text.
 */
#include <string.h>

#include "server.h"

static const char *const route_labels[] = {
#define XX(name, label) label,
    CH_ROUTE_MAP(XX)
#undef XX
};

/* The statuses charter answers with; anything else is counted under "other". */
static const int statuses[] = {200, 201, 400, 401, 404, 405, 409, 413, 422, 423, 500, 503, 0};
#define NSTATUS (sizeof(statuses) / sizeof(statuses[0]))

static ch_histogram latency[CH__ROUTE_COUNT][NSTATUS];

__attribute__((constructor)) static void init_histograms(void)
{
    for (int r = 0; r < CH__ROUTE_COUNT; r++) {
        for (size_t s = 0; s < NSTATUS; s++)
            latency[r][s].bounds = ch_hist_latency_bounds;
    }
}

const char *ch__route_label(ch_route route)
{
    return (unsigned)route < CH__ROUTE_COUNT ? route_labels[route] : "other";
}

void ch__metrics_observe(ch_route route, int status, uint64_t elapsed_ns)
{
    size_t s = 0;
    while (s < NSTATUS - 1 && statuses[s] != status)
        s++;
    if ((unsigned)route >= CH__ROUTE_COUNT)
        route = CH_ROUTE_OTHER;
    ch_histogram_observe(&latency[route][s], (double)elapsed_ns / 1e9);
}

void ch__metrics_render(ch_buf *out)
{
    char labels[160];
    ch_buf_printf(out, "# HELP charter_http_requests_total HTTP requests by route and status.\n"
                       "# TYPE charter_http_requests_total counter\n");
    for (int r = 0; r < CH__ROUTE_COUNT; r++) {
        for (size_t s = 0; s < NSTATUS; s++) {
            uint64_t n = __atomic_load_n(&latency[r][s].count, __ATOMIC_RELAXED);
            if (n == 0)
                continue;
            if (statuses[s])
                ch_buf_printf(out, "charter_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                              route_labels[r], statuses[s], (unsigned long long)n);
            else
                ch_buf_printf(out,
                              "charter_http_requests_total{route=\"%s\",status=\"other\"} %llu\n",
                              route_labels[r], (unsigned long long)n);
        }
    }
    ch_buf_printf(out, "# HELP charter_http_request_seconds HTTP request latency.\n"
                       "# TYPE charter_http_request_seconds histogram\n");
    for (int r = 0; r < CH__ROUTE_COUNT; r++) {
        for (size_t s = 0; s < NSTATUS; s++) {
            if (__atomic_load_n(&latency[r][s].count, __ATOMIC_RELAXED) == 0)
                continue;
            if (statuses[s])
                snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%d\"", route_labels[r],
                         statuses[s]);
            else
                snprintf(labels, sizeof(labels), "route=\"%s\",status=\"other\"", route_labels[r]);
            ch_histogram_render(&latency[r][s], "charter_http_request_seconds", labels, out);
        }
    }
}
