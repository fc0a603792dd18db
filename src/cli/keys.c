/*
 * keys.c — `charter keys create`: makes an API key for a tenant directly in the data
 * dir, without a running server (or next to one: the database takes concurrent
 * writers). The key is printed once on stdout; only its hash is stored.
 *
 * `charter keys signing` fetches the server's public artifact-signing key (a JWK)
 * and prints it exactly as served, for `charter mandate verify-artifact`.
 */
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

/* One option table for both verbs; each takes its own part of it. */
enum opt { O_TENANT = CH__O_OWN, O_DATA_DIR, O_CONFIG, O__COUNT };

static const ch__opt_spec opts[O__COUNT] = {
    /* signing */
    [CH__O_JSON] = {"json", CH__OPT_FLAG},
    [CH__O_URL] = {"url", CH__OPT_RAW},
    [CH__O_KEY_FILE] = {"key-file", CH__OPT_RAW},
    /* both */
    [CH__O_HELP] = {"help", CH__OPT_STOP},
    /* create */
    [O_TENANT] = {"tenant", CH__OPT_RAW},
    [O_DATA_DIR] = {"data-dir", CH__OPT_RAW},
    [O_CONFIG] = {"config", CH__OPT_RAW},
};

/* --json is accepted by `signing` for symmetry with the other commands: its output
 * is JSON anyway. */
#define SIGNING_OPTS CH__COMMON_OPTS
#define CREATE_OPTS                                                                                \
    (CH__BIT(O_TENANT) | CH__BIT(O_DATA_DIR) | CH__BIT(O_CONFIG) | CH__BIT(CH__O_HELP))

static const ch__cmd keys_cmd = {
    .name = "keys",
    .opts = opts,
    .nopts = O__COUNT,
    .help = usage_text,
};

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
    ch__args a = {.cmd = &keys_cmd};
    char *text = NULL;
    size_t len = 0;
    int rc;

    rc = ch__opts_parse(&a, argc, argv, SIGNING_OPTS, false);
    if (rc != CH__EXIT_OK)
        return rc;
    if (a.set[CH__O_HELP]) {
        ch__usage(stdout, &a);
        return ch__flush_stdout();
    }
    if (a.npos > 0)
        return ch__usage_error(&a, "unexpected argument '%s'", a.pos[0]);

    rc = ch__client_init(a.str[CH__O_URL], a.str[CH__O_KEY_FILE]);
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
    ch__args a = {.cmd = &keys_cmd};
    int rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        ch__usage(argc < 2 ? stderr : stdout, &a);
        return argc < 2 ? CH__EXIT_USAGE : CH__EXIT_OK;
    }
    if (strcmp(argv[1], "signing") == 0)
        return keys_signing(argc - 1, argv + 1);
    if (strcmp(argv[1], "create") != 0)
        return ch__usage_error(&a, "unknown verb '%s'", argv[1]);

    rc = ch__opts_parse(&a, argc - 1, argv + 1, CREATE_OPTS, false);
    if (rc != CH__EXIT_OK)
        return rc;
    if (a.set[CH__O_HELP]) {
        ch__usage(stdout, &a);
        return CH__EXIT_OK;
    }
    if (a.npos > 0)
        return ch__usage_error(&a, "unexpected argument '%s'", a.pos[0]);
    if (a.str[O_TENANT] == NULL)
        return ch__usage_error(&a, "--tenant is required");
    if (!ch_tenant_valid(a.str[O_TENANT])) {
        fprintf(stderr, "charter: invalid tenant '%s': use 1-64 of [a-z0-9_-]\n", a.str[O_TENANT]);
        return CH__EXIT_FAIL;
    }
    return keys_create(a.str[O_TENANT], a.str[O_DATA_DIR], a.str[O_CONFIG]);
}
