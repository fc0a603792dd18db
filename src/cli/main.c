/*
 * main.c — the `charter` binary's entry point: dispatches `charter <command> ...` to
 * the command's own main (serve, keys, session, mandate, events, scope) through one table,
 * and answers --help and --version.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct command {
    const char *name;
    int (*main)(int argc, char **argv); /* argv[0] is the command name */
    const char *summary;
} command;

static const command commands[] = {
    {"serve", ch__serve_main, "run the HTTP server (see docs/config.md)"},
    {"keys", ch__keys_main, "create API keys offline; fetch the artifact signing key"},
    {"session", ch__session_main, "open, read and write sessions through the HTTP API"},
    {"mandate", ch__mandate_main, "create, delegate, check and revoke mandates; verify artifacts"},
    {"events", ch__events_main, "follow the stream of mandate and session events"},
    {"scope", ch__scope_main,
     "ephemeral scopes: create, get, set, merge, lock, unlock, extend, upgrade,\n"
     "            complete, delete, purge-agent; top (live view of the scope metrics)"},
};

static void usage(FILE *f)
{
    fputs("usage: charter <command> [args]\n\ncommands:\n", f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fputs("\n"
          "  charter <command> --help   help on one command\n"
          "  charter --version          print the version\n"
          "\n"
          "environment (session, mandate, events, scope, keys signing):\n"
          "  CHARTER_URL (default http://127.0.0.1:7433), CHARTER_KEY\n"
          "exit codes: 0 ok, 1 error, 2 server unreachable, 64 usage error\n",
          f);
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : NULL;

    if (name == NULL) {
        usage(stderr);
        return CH__EXIT_USAGE;
    }
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        usage(stdout);
        return CH__EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        puts("charter " CH__CLI_VERSION);
        return ch__flush_stdout();
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return commands[i].main(argc - 1, argv + 1);
    }
    fprintf(stderr, "charter: unknown command '%s'\n\n", name);
    usage(stderr);
    return CH__EXIT_USAGE;
}
