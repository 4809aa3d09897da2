/* Replays every file of the corpus directories (or single files) given on the
 * command line through LLVMFuzzerTestOneInput, so the gcc build checks the
 * corpora without libFuzzer: a crash, an abort() in a target or a sanitizer
 * report fails the run. Prints how many inputs it replayed. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "lb_err.h"
#include "lb_io_util.h"

static int replay_file(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    lb_err err;
    if (lb_io_read_file(path, 1u << 24, &text, &len, &err) != 0) {
        fprintf(stderr, "fuzz replay: %s\n", err.msg);
        return 1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)text, len);
    free(text);
    return 0;
}

int main(int argc, char **argv)
{
    long replayed = 0;
    for (int a = 1; a < argc; a++) {
        struct stat sb;
        if (stat(argv[a], &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (replay_file(argv[a]))
                return 1;
            replayed++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        if (!d) {
            fprintf(stderr, "fuzz replay: cannot open corpus directory %s\n", argv[a]);
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char *path = lb_io_path_join(argv[a], e->d_name);
            char *text = NULL;
            size_t len = 0;
            lb_err err;
            if (!path || lb_io_read_file(path, 1u << 24, &text, &len, &err) != 0) {
                fprintf(stderr, "fuzz replay: %s\n", path ? err.msg : "out of memory");
                free(path);
                closedir(d);
                return 1;
            }
            LLVMFuzzerTestOneInput((const uint8_t *)text, len);
            replayed++;
            free(text);
            free(path);
        }
        closedir(d);
    }
    printf("fuzz replay: %ld inputs\n", replayed);
    return replayed > 0 ? 0 : 1;
}
