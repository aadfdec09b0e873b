/* moelm.h: the public surface of libmoelm.
 *
 * Status codes shared by every module, and the last-error message. Environmental failures (I/O,
 * bad files, bad configs, out of memory) come back as a moelm_status with a message from
 * moelm_last_error(); the CLI prints it on one line and exits non-zero.
 */
#ifndef MOELM_H
#define MOELM_H

typedef enum {
    MOELM_OK = 0,
    MOELM_ERR_IO,        /* a file could not be opened, read, written, synced or renamed */
    MOELM_ERR_FORMAT,    /* a file's contents are malformed or corrupt */
    MOELM_ERR_CONFIG,    /* an invalid configuration or option value */
    MOELM_ERR_NOMEM,     /* an allocation failed */
    MOELM_ERR_ARG,       /* a bad command-line argument */
    MOELM_ERR_DATA,      /* unusable data: empty corpus, token id out of range */
    MOELM_ERR_NONFINITE, /* a NaN or Inf appeared in the loss or the gradients */
} moelm_status;

/* The message of the last failure on this thread. */
const char *moelm_last_error(void);

#define MOELM_VERSION "0.1.0"

#endif
