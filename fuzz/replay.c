/*
 * replay.c — a main() for a fuzz target without libFuzzer: it calls
 * LLVMFuzzerTestOneInput once per file named on the command line, or per file in a
 * directory named there (sorted by name, not recursive). This is how the corpora run
 * as ordinary CTest tests with any compiler; a crash or sanitizer report fails them.
 *
 * Each input runs in its own child process, so one crashing input does not hide the
 * others: every failing input is reported, and the exit status is 1 if any failed.
 * The input is read into a buffer of exactly its size, so the sanitizers catch a read
 * past its end; the child exits normally, so LeakSanitizer checks each input.
 *
 * TMPDIR points the targets at a private directory that replay removes at the end, so
 * an input that crashes before a target cleans up leaves nothing behind.
 */
#include <dirent.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads path and runs it once, in this process. */
static int run_input(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat sb;
    if (f == NULL || fstat(fileno(f), &sb) != 0) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        if (f != NULL)
            fclose(f);
        return -1;
    }
    size_t size = (size_t)sb.st_size;
    uint8_t *data = malloc(size ? size : 1);
    if (data == NULL || fread(data, 1, size, f) != size) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(data);
        fclose(f);
        return -1;
    }
    fclose(f);
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, size);
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 0;
}

static int failures;

/* Runs one input in a child process; returns 0 when it could be run at all. */
static int run_file(const char *path)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("replay: fork");
        return -1;
    }
    if (pid == 0)
        exit(run_input(path) == 0 ? 0 : 3);
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        perror("replay: waitpid");
        return -1;
    }
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "replay: FAILED %s (signal %d)\n", path, WTERMSIG(status));
        failures++;
    } else if (WEXITSTATUS(status) == 3) {
        return -1;
    } else if (WEXITSTATUS(status) != 0) {
        fprintf(stderr, "replay: FAILED %s (exit status %d)\n", path, WEXITSTATUS(status));
        failures++;
    }
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file in dir; returns how many ran, -1 on error. */
static int run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *ent;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int ran = 0;

    if (d == NULL) {
        fprintf(stderr, "replay: cannot open directory %s\n", dir);
        return -1;
    }
    while ((ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **p = realloc(names, cap * sizeof(*p));
            if (p == NULL)
                abort();
            names = p;
        }
        names[n] = strdup(ent->d_name);
        if (names[n] == NULL)
            abort();
        n++;
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof(*names), by_name);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (run_file(path) != 0)
                ran = -1;
            else if (ran >= 0)
                ran++;
        }
        free(names[i]);
    }
    free(names);
    return ran;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static char tmp_dir[1024];
static pid_t parent;

/* At the parent's exit only: the children inherit this atexit handler. */
static void remove_tmp_dir(void)
{
    if (getpid() == parent)
        nftw(tmp_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int main(int argc, char **argv)
{
    int total = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/charter-replay-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(tmp_dir) == NULL) {
        perror("replay: mkdtemp");
        return 1;
    }
    parent = getpid();
    atexit(remove_tmp_dir);
    setenv("TMPDIR", tmp_dir, 1);
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        int ran;
        if (stat(argv[i], &sb) != 0) {
            fprintf(stderr, "replay: no such file or directory: %s\n", argv[i]);
            return 1;
        }
        ran = S_ISDIR(sb.st_mode) ? run_dir(argv[i]) : (run_file(argv[i]) == 0 ? 1 : -1);
        if (ran < 0)
            return 1;
        total += ran;
    }
    /* A replay that ran nothing tested nothing. */
    if (total == 0) {
        fprintf(stderr, "replay: no inputs\n");
        return 1;
    }
    if (failures > 0) {
        fprintf(stderr, "replay: %d inputs, %d FAILED\n", total, failures);
        return 1;
    }
    fprintf(stderr, "replay: %d inputs, no failures\n", total);
    return 0;
}
