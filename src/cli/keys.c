/*
 * keys.c — `charter keys create`: makes an API key for a tenant directly in the data
 * dir, without a running server (or next to one: the database takes concurrent
 * writers). The key is printed once on stdout; only its hash is stored.
 *
 * `charter keys signing` fetches the server's public artifact-signing key (a JWK)
 * and prints it exactly as served, for `charter mandate verify-artifact`.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "charter.h"
#include "cli/cli.h"

static const char usage_text[] =
    "usage: charter keys create --tenant T [--data-dir DIR] [--config FILE]\n"
    "       charter keys signing [--url URL] [--key-file FILE]\n"
    "\n"
    "create: creates tenant T if it is new and an API key for it, and prints the key on\n"
    "stdout. Works on the data dir directly; a server may be running on it.\n"
    "\n"
    "  --tenant T       tenant name: 1-64 of [a-z0-9_-]\n"
    "  --data-dir DIR   data dir (default: from --config, CHARTER_DATA_DIR, ./charter-data)\n"
    "  --config FILE    charter.yaml to read first\n"
    "\n"
    "signing: prints the server's public artifact-signing key (GET /v1/keys/signing), a\n"
    "JWK, exactly as served: save it for `charter mandate verify-artifact --public-key`.\n"
    "\n"
    "  --url URL        server base URL (default: $CHARTER_URL, else http://127.0.0.1:7433)\n"
    "  --key-file FILE  read the API key from the first line of FILE (default: $CHARTER_KEY)\n";

static int usage_error(const char *fmt, const char *arg)
{
    fputs("charter: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n\n", stderr);
    fputs(usage_text, stderr);
    return CH__EXIT_USAGE;
}

static int keys_create(const char *tenant, const char *data_dir, const char *config_file)
{
    ch_config cfg;
    ch_err err;
    ch_db *db = NULL;
    char key[CH_KEY_MAX];
    int rc = CH__EXIT_FAIL;

    ch_err_clear(&err);
    ch_config_defaults(&cfg);
    if (config_file != NULL && ch_config_load_file(&cfg, config_file, &err) != CH_OK)
        goto fail;
    if (data_dir != NULL && ch_config_set(&cfg, "data_dir", data_dir, &err) != CH_OK)
        goto fail;
    if (ch_config_load_env(&cfg, &err) != CH_OK)
        goto fail;
    if (ch_db_open(&cfg, false, &db, &err) != CH_OK)
        goto fail;
    if (ch_key_create(db, tenant, key, &err) != CH_OK)
        goto fail;
    printf("%s\n", key);
    sodium_memzero(key, sizeof key);
    rc = ch__flush_stdout();
    ch_db_close(db);
    return rc;

fail:
    fprintf(stderr, "charter: %s: %s", ch_status_name(err.status),
            err.message[0] != '\0' ? err.message : ch_strerror(err.status));
    if (err.field[0] != '\0')
        fprintf(stderr, " (field: %s)", err.field);
    fputc('\n', stderr);
    if (db != NULL)
        ch_db_close(db);
    return rc;
}

/* `keys signing`: the reply body goes to stdout byte for byte (plus a newline when it
 * lacks one), so the saved file is what the server published. */
static int keys_signing(int argc, char **argv)
{
    /* --json is accepted for symmetry with the other commands: the output is JSON. */
    static const struct option longopts[] = {
        {"url", required_argument, NULL, 'u'},
        {"key-file", required_argument, NULL, 'k'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *key_file = NULL;
    char *text = NULL;
    size_t len = 0;
    int opt, rc;

    optind = 0;
    opterr = 0;
    for (;;) {
        opt = getopt_long(argc, argv, ":h", longopts, NULL);
        if (opt == -1)
            break;
        switch (opt) {
        case 'u':
            url = optarg;
            break;
        case 'k':
            key_file = optarg;
            break;
        case 'j':
            break;
        case 'h':
            fputs(usage_text, stdout);
            return ch__flush_stdout();
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);

    rc = ch__client_init(url, key_file);
    if (rc == CH__EXIT_OK)
        rc = ch__client_get_text("/v1/keys/signing", &text, &len);
    ch__client_cleanup();
    if (rc != CH__EXIT_OK)
        return rc;
    fwrite(text, 1, len, stdout);
    if (len == 0 || text[len - 1] != '\n')
        fputc('\n', stdout);
    free(text);
    return ch__flush_stdout();
}

int ch__keys_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tenant", required_argument, NULL, 't'},
        {"data-dir", required_argument, NULL, 'd'},
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *tenant = NULL, *data_dir = NULL, *config_file = NULL;
    int opt;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? CH__EXIT_USAGE : CH__EXIT_OK;
    }
    if (strcmp(argv[1], "signing") == 0)
        return keys_signing(argc - 1, argv + 1);
    if (strcmp(argv[1], "create") != 0)
        return usage_error("unknown verb '%s'", argv[1]);

    argc--;
    argv++;
    optind = 0;
    opterr = 0;
    for (;;) {
        opt = getopt_long(argc, argv, ":h", longopts, NULL);
        if (opt == -1)
            break;
        switch (opt) {
        case 't':
            tenant = optarg;
            break;
        case 'd':
            data_dir = optarg;
            break;
        case 'c':
            config_file = optarg;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return CH__EXIT_OK;
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (tenant == NULL)
        return usage_error("%s", "--tenant is required");
    if (!ch_tenant_valid(tenant)) {
        fprintf(stderr, "charter: invalid tenant '%s': use 1-64 of [a-z0-9_-]\n", tenant);
        return CH__EXIT_FAIL;
    }
    return keys_create(tenant, data_dir, config_file);
}
