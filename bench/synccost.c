/*
 * synccost: what one durable audit round costs this machine's disk, by
 * how the bytes reach the file (issue 16, the key holder's share).
 *
 *   synccost [--dir DIR] [--records N] [--bytes B] [--rounds R]
 *
 * Two ways of making B bytes durable, N times each, interleaved round by
 * round (the machine is shared: only the ratio of the two means much):
 *
 *   append     write(2) at the end of the file, then fdatasync: what the
 *              audit log does. The file's size changes with every record,
 *              so each fdatasync also commits the inode (on ext4 a
 *              journal commit), besides the data and the disk's flush.
 *   overwrite  pwrite(2) into a file already written out to its full
 *              size, cycling through it, then fdatasync: nothing but the
 *              data and the flush (what a preallocated write-ahead ring
 *              in front of the log would do).
 *
 * Prints, per way, the median over rounds of this process's CPU (user +
 * system, getrusage) and wall time per fdatasync. Kernel threads (jbd2)
 * are not counted, so the difference is if anything understated. The
 * files are made in DIR (default /var/tmp: a disk, not a tmpfs) and
 * removed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"

#define PROG "synccost"
#define RING_BYTES (4 << 20)
#define MAX_ROUNDS 99

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One round of one way: n records of len bytes, each made durable alone.
 * *cpu_us and *wall_us per record; 0, or -1 after a message. */
static int one_round(const char *dir, int overwrite, long n, size_t len, double *cpu_us, double *wall_us)
{
    char path[4096];
    char *rec = NULL, *zero = NULL;
    int fd = -1, rc = -1;
    off_t off = 0;

    if (snprintf(path, sizeof(path), "%s/synccost.%ld.%s", dir, (long)getpid(), overwrite ? "ring" : "log") >=
        (int)sizeof(path)) {
        fprintf(stderr, "synccost: --dir too long\n");
        return -1;
    }
    if ((rec = malloc(len)) == NULL || (zero = calloc(1, 65536)) == NULL)
        goto out;
    memset(rec, 'a', len);
    rec[len - 1] = '\n';
    if ((fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
        fprintf(stderr, "synccost: %s: %s\n", path, strerror(errno));
        goto out;
    }
    if (overwrite) {
        for (off_t o = 0; o < RING_BYTES; o += 65536)
            if (pwrite(fd, zero, 65536, o) != 65536)
                goto io;
        if (fsync(fd) != 0)
            goto io;
    }
    double c0 = bench_cpu_seconds(), w0 = (double)bench_now_ns() / 1e9;
    for (long i = 0; i < n; i++) {
        ssize_t w = overwrite ? pwrite(fd, rec, len, off) : write(fd, rec, len);
        if (w != (ssize_t)len || fdatasync(fd) != 0)
            goto io;
        off = (off_t)((off + (off_t)len) % (RING_BYTES - (off_t)len));
    }
    *cpu_us = (bench_cpu_seconds() - c0) / (double)n * 1e6;
    *wall_us = ((double)bench_now_ns() / 1e9 - w0) / (double)n * 1e6;
    rc = 0;
    goto out;
io:
    fprintf(stderr, "synccost: %s: %s\n", path, strerror(errno));
out:
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
    free(rec);
    free(zero);
    return rc;
}

int main(int argc, char **argv)
{
    const char *dir = "/var/tmp";
    uint64_t records = 2000, bytes = 700, rounds = 5;
    double cpu[2][MAX_ROUNDS], wall[2][MAX_ROUNDS];

    for (int i = 1; i < argc; i++) {
        const char *op = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        i++;
        if (v == NULL)
            bad = 1;
        else if (strcmp(op, "--dir") == 0)
            dir = v;
        else if (strcmp(op, "--records") == 0)
            bad = bench_arg_u64(PROG, op, v, 10, 1000000, &records) != 0;
        else if (strcmp(op, "--bytes") == 0)
            bad = bench_arg_u64(PROG, op, v, 16, 65536, &bytes) != 0;
        else if (strcmp(op, "--rounds") == 0)
            bad = bench_arg_u64(PROG, op, v, 1, MAX_ROUNDS, &rounds) != 0;
        else
            bad = 1;
        if (bad) {
            fprintf(stderr, "usage: synccost [--dir DIR] [--records 10..1000000] [--bytes 16..65536] "
                            "[--rounds 1..%d]\n",
                    MAX_ROUNDS);
            return 2;
        }
    }
    for (uint64_t r = 0; r < rounds; r++)
        for (int way = 0; way < 2; way++) {
            /* alternate which way goes first, so neither always follows the other's write-back */
            int w = (int)(((uint64_t)way + r) % 2);
            if (one_round(dir, w, (long)records, (size_t)bytes, &cpu[w][r], &wall[w][r]) != 0)
                return 1;
        }
    double ca = median(cpu[0], (int)rounds), co = median(cpu[1], (int)rounds);
    double wa = median(wall[0], (int)rounds), wo = median(wall[1], (int)rounds);
    printf("way,cpu_us_per_sync,wall_us_per_sync\n");
    printf("append,%.1f,%.1f\n", ca, wa);
    printf("overwrite,%.1f,%.1f\n", co, wo);
    printf("overwrite/append,%.2f,%.2f\n", ca > 0 ? co / ca : 0, wa > 0 ? wo / wa : 0);
    return 0;
}
