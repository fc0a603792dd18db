/*
 * client.c — the command line's HTTP client: one libcurl easy handle reused for every
 * request of the process (so `--all` paging keeps its connection), the base URL and
 * bearer key, and the translation of replies into exit codes and error messages.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "charter.h"
#include "cli/cli.h"

#define DEFAULT_URL "http://127.0.0.1:7433"

static struct {
    CURL *curl;
    bool global_init;
    char *base; /* no trailing '/' */
    char *auth; /* "Authorization: Bearer <key>", wiped on cleanup; NULL without a key */
} client;

/* The libcurl write callback that collects a reply body into a ch_buf. */
static size_t on_data(char *p, size_t size, size_t n, void *udata)
{
    ch_buf_append(udata, p, size * n);
    return size * n;
}

/* Strips leading and trailing whitespace in place; returns the start. */
static char *trim(char *s)
{
    size_t n;

    while (isspace((unsigned char)*s))
        s++;
    n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Sets client.auth from text, the key with surrounding whitespace; source names
 * where it came from for the error message. The caller wipes text. */
static int set_key(char *text, const char *source)
{
    char *key = trim(text);

    /* The key goes into a header line: anything but printable ASCII would corrupt it. */
    for (const char *p = key; *p; p++) {
        if (*p < 0x21 || *p > 0x7e)
            goto fail;
    }
    if (*key == '\0')
        goto fail;
    client.auth = ch__xasprintf("Authorization: Bearer %s", key);
    return CH__EXIT_OK;

fail:
    fprintf(stderr, "charter: %s does not hold an API key\n", source);
    return CH__EXIT_FAIL;
}

/* Sets the key from the first line of the file at path. */
static int load_key_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL, *source;
    size_t cap = 0;
    int rc;

    if (f == NULL) {
        fprintf(stderr, "charter: cannot read key file %s: %s\n", path, strerror(errno));
        return CH__EXIT_FAIL;
    }
    source = ch__xasprintf("the first line of key file %s", path);
    if (getline(&line, &cap, f) < 0) {
        fprintf(stderr, "charter: key file %s is empty\n", path);
        rc = CH__EXIT_FAIL;
    } else {
        rc = set_key(line, source);
    }
    if (line != NULL)
        sodium_memzero(line, cap);
    free(line);
    free(source);
    fclose(f);
    return rc;
}

int ch__client_init(const char *url, const char *key_file)
{
    const char *env_key = getenv("CHARTER_KEY");
    size_t n;
    int rc;

    if (url == NULL || *url == '\0')
        url = getenv("CHARTER_URL");
    if (url == NULL || *url == '\0')
        url = DEFAULT_URL;
    client.base = ch__xstrdup(url);
    n = strlen(client.base);
    while (n > 0 && client.base[n - 1] == '/')
        client.base[--n] = '\0';

    if (key_file != NULL) {
        rc = load_key_file(key_file);
        if (rc != CH__EXIT_OK)
            return rc;
    } else if (env_key != NULL && *env_key != '\0') {
        char *copy = ch__xstrdup(env_key);

        rc = set_key(copy, "CHARTER_KEY");
        sodium_memzero(copy, strlen(copy));
        free(copy);
        if (rc != CH__EXIT_OK)
            return rc;
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fputs("charter: cannot initialise libcurl\n", stderr);
        return CH__EXIT_FAIL;
    }
    client.global_init = true;
    client.curl = curl_easy_init();
    if (client.curl == NULL) {
        fputs("charter: cannot initialise libcurl\n", stderr);
        return CH__EXIT_FAIL;
    }
    return CH__EXIT_OK;
}

void ch__client_cleanup(void)
{
    if (client.curl != NULL)
        curl_easy_cleanup(client.curl);
    if (client.global_init)
        curl_global_cleanup();
    if (client.auth != NULL) {
        sodium_memzero(client.auth, strlen(client.auth));
        free(client.auth);
    }
    free(client.base);
    memset(&client, 0, sizeof client);
}

const char *ch__client_base_url(void)
{
    return client.base != NULL ? client.base : DEFAULT_URL;
}

char *ch__client_escape(const char *s)
{
    char *e = curl_easy_escape(client.curl, s, 0);
    char *copy;

    if (e == NULL)
        ch__oom();
    copy = ch__xstrdup(e);
    curl_free(e);
    return copy;
}

char *ch__client_path(const char *collection, const char *id, const char *suffix)
{
    char *esc = ch__client_escape(id);
    char *path = ch__xasprintf("%s/%s%s", collection, esc, suffix);

    free(esc);
    return path;
}

static struct curl_slist *add_header(struct curl_slist *list, const char *line)
{
    struct curl_slist *l = curl_slist_append(list, line);

    if (l == NULL)
        ch__oom();
    return l;
}

/* Prints the error of a non-2xx reply: the API's {"error":{code,message,field,state}}
 * when there is one, else the status and the start of whatever the body was. */
static void report_error(long status, const json_t *reply, const ch_buf *raw)
{
    const json_t *err = json_object_get(reply, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *message = json_string_value(json_object_get(err, "message"));
    const char *field = json_string_value(json_object_get(err, "field"));
    const char *state = json_string_value(json_object_get(err, "state"));

    if (code != NULL) {
        fprintf(stderr, "charter: %s: %s", code, message != NULL ? message : "");
        if (field != NULL && *field != '\0')
            fprintf(stderr, " (field: %s)", field);
        if (state != NULL && *state != '\0')
            fprintf(stderr, " (state: %s)", state);
        fputc('\n', stderr);
    } else if (raw->len > 0) {
        char *line = ch__clip_text(raw->data, 200);

        fprintf(stderr, "charter: HTTP %ld: %s\n", status, line);
        free(line);
    } else {
        fprintf(stderr, "charter: HTTP %ld\n", status);
    }
    if (status == 401 && client.auth == NULL)
        fputs("charter: no API key given: set CHARTER_KEY or pass --key-file FILE\n", stderr);
}

/* Sets the options every request shares on the (reset) handle: url, timeouts, user
 * agent, headers and the error buffer. */
static void setup_handle(CURL *c, const char *url, struct curl_slist *headers, char *errbuf)
{
    /* Reset keeps the live connection; it forgets the previous request's options. */
    curl_easy_reset(c);
    errbuf[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "charter-cli/" CH__CLI_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
}

/* One request; on a 2xx JSON reply *reply_out gets the document and, when text_out
 * is not NULL, *text_out the body exactly as received (malloc'd, NUL-terminated). */
static int perform(const char *method, const char *path, const char *body, size_t body_len,
                   long *status_out, json_t **reply_out, char **text_out, size_t *text_len)
{
    CURL *c = client.curl;
    struct curl_slist *headers = NULL;
    ch_buf raw = {0};
    char errbuf[CURL_ERROR_SIZE];
    char *url = NULL;
    json_t *reply = NULL;
    long status = 0;
    CURLcode cc;
    int rc = CH__EXIT_FAIL;

    *reply_out = NULL;
    if (status_out != NULL)
        *status_out = 0;
    url = ch__xasprintf("%s%s", client.base, path);

    headers = add_header(headers, "Accept: application/json");
    if (body != NULL)
        headers = add_header(headers, "Content-Type: application/json");
    /* No "Expect: 100-continue" round trip before large bodies. */
    headers = add_header(headers, "Expect:");
    if (client.auth != NULL)
        headers = add_header(headers, client.auth);

    setup_handle(c, url, headers, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &raw);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    if (strcmp(method, "GET") == 0)
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    else if (strcmp(method, "POST") != 0 || body == NULL)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);

    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        fprintf(stderr, "charter: cannot reach %s: %s\n", client.base,
                errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
        rc = CH__EXIT_UNREACHABLE;
        goto done;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status_out != NULL)
        *status_out = status;
    if (raw.len > 0)
        reply = json_loadb(raw.data, raw.len, 0, NULL);

    if (status < 200 || status >= 300) {
        report_error(status, reply, &raw);
        goto done;
    }
    if (reply == NULL) {
        fprintf(stderr, "charter: unexpected reply from %s (HTTP %ld): not a JSON document\n",
                client.base, status);
        goto done;
    }
    *reply_out = reply;
    reply = NULL;
    if (text_out != NULL) {
        *text_out = raw.data;
        *text_len = raw.len;
        raw.data = NULL;
    }
    rc = CH__EXIT_OK;

done:
    json_decref(reply);
    curl_slist_free_all(headers);
    free(raw.data);
    free(url);
    return rc;
}

int ch__client_request_raw(const char *method, const char *path, const char *body, size_t body_len,
                           long *status_out, json_t **reply_out)
{
    return perform(method, path, body, body_len, status_out, reply_out, NULL, NULL);
}

int ch__client_get_text(const char *path, char **text, size_t *len)
{
    json_t *reply = NULL;
    int rc = perform("GET", path, NULL, 0, NULL, &reply, text, len);

    json_decref(reply);
    return rc;
}

/* ---------------------------------------------------------------------------------
 * Streaming (Server-Sent Events)
 * ------------------------------------------------------------------------------- */

typedef struct stream_ctx {
    CURL *curl;
    ch__client_sink sink;
    void *udata;
    int verdict;  /* 0 until the status is known, then 1 (2xx: stream) or -1 (error) */
    bool stopped; /* the sink asked to stop */
    ch_buf err;   /* the body of an error reply */
} stream_ctx;

static size_t on_stream_data(char *p, size_t size, size_t n, void *udata)
{
    stream_ctx *s = udata;
    size_t len = size * n;

    if (s->verdict == 0) {
        long status = 0;

        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
        s->verdict = status >= 200 && status < 300 ? 1 : -1;
    }
    if (s->verdict < 0)
        return on_data(p, size, n, &s->err);
    if (s->sink(p, len, s->udata) != len) {
        s->stopped = true;
        return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
    }
    return len;
}

int ch__client_stream(const char *path, const char *const *extra_headers, ch__client_sink sink,
                      void *udata, long *status_out, char *why, size_t why_size)
{
    CURL *c = client.curl;
    struct curl_slist *headers = NULL;
    stream_ctx s = {.curl = c, .sink = sink, .udata = udata};
    char errbuf[CURL_ERROR_SIZE];
    char *url = ch__xasprintf("%s%s", client.base, path);
    json_t *reply = NULL;
    long status = 0;
    CURLcode cc;
    int rc;

    why[0] = '\0';
    headers = add_header(headers, "Accept: text/event-stream");
    headers = add_header(headers, "Cache-Control: no-cache");
    if (client.auth != NULL)
        headers = add_header(headers, client.auth);
    for (size_t i = 0; extra_headers != NULL && extra_headers[i] != NULL; i++)
        headers = add_header(headers, extra_headers[i]);

    setup_handle(c, url, headers, errbuf);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_stream_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    /* The server sends a keep-alive comment every 15 s: a connection silent for 45 s
     * is dead even if TCP has not noticed. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 45L);

    cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status_out != NULL)
        *status_out = status;
    if (s.verdict == 0 && status != 0)
        s.verdict = status >= 200 && status < 300 ? 1 : -1;

    if (s.verdict > 0) {
        /* The stream ran; however it ended (the sink stopped it, the server closed it,
         * the connection broke), the caller decides what comes next. */
        if (cc != CURLE_OK && !s.stopped)
            snprintf(why, why_size, "%s", errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
        rc = CH__EXIT_OK;
    } else if (s.verdict < 0 && status != 503) {
        if (s.err.len > 0)
            reply = json_loadb(s.err.data, s.err.len, 0, NULL);
        report_error(status, reply, &s.err);
        rc = CH__EXIT_FAIL;
    } else {
        /* No reply, or 503 (the server is draining for a restart): both are worth
         * waiting out. */
        if (s.verdict < 0)
            snprintf(why, why_size, "HTTP %ld (the server is not serving)", status);
        else
            snprintf(why, why_size, "%s", errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
        rc = CH__EXIT_UNREACHABLE;
    }
    json_decref(reply);
    free(s.err.data);
    curl_slist_free_all(headers);
    free(url);
    return rc;
}

int ch__client_request(const char *method, const char *path, const json_t *body, long *status,
                       json_t **reply)
{
    char *text = NULL;
    int rc;

    if (body != NULL) {
        text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(ch__json_real_precision(body)));
        if (text == NULL)
            ch__oom();
    }
    rc = ch__client_request_raw(method, path, text, text != NULL ? strlen(text) : 0, status, reply);
    free(text);
    return rc;
}
