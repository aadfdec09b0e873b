/* fuzz_readers.h: shared by the file-reader fuzz targets: the input goes to a file of this process
 * (the readers take paths), and every failure must carry a one-line message naming that file. */
#ifndef MOELM_FUZZ_READERS_H
#define MOELM_FUZZ_READERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/util.h"

static char g_fuzz_dir[256];

/* Writes data to DIR/name (DIR: a directory of this process) and returns the path. */
static const char *fuzz_file(const char *name, const uint8_t *data, size_t size) {
    static char path[512];
    if (!g_fuzz_dir[0]) {
        snprintf(g_fuzz_dir, sizeof g_fuzz_dir, "/tmp/moelm-fuzz-%d", (int)getpid());
        mkdir(g_fuzz_dir, 0700);
    }
    snprintf(path, sizeof path, "%s/%s", g_fuzz_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

/* A failure's message is one line and names what was read. */
static void fuzz_check_message(const char *what) {
    const char *m = moelm_last_error();
    if (strchr(m, '\n')) abort();
    if (!strstr(m, what) && !strstr(m, "out of memory")) abort();
}

#endif
