/* Fork+exec load for the procmon benchmarks: run PROGRAM again and again for SECONDS,
 * either as fast as WORKERS parallel loops can (RATE 0) or paced at RATE per second
 * (one loop). Prints "<execs> <seconds>" on stdout.
 *   forkexec SECONDS RATE WORKERS PROGRAM [ARGS...]                                    */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long loop(double seconds, double rate, char **argv) {
    double t0 = now(), end = t0 + seconds;
    long n = 0;
    for (;;) {
        double t = now();
        if (t >= end) break;
        if (rate > 0) {
            double due = t0 + n / rate;
            if (due > t) {
                struct timespec ts = {(time_t)(due - t), (long)(((due - t) - (time_t)(due - t)) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); exit(1); }
        if (pid == 0) { execv(argv[0], argv); _exit(127); }
        int st;
        waitpid(pid, &st, 0);
        n++;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: forkexec SECONDS RATE WORKERS PROGRAM [ARGS...]\n");
        return 2;
    }
    double seconds = atof(argv[1]), rate = atof(argv[2]);
    int workers = atoi(argv[3]);
    if (rate > 0 || workers < 1) workers = 1;
    int fds[2];
    if (pipe(fds)) { perror("pipe"); return 1; }
    double t0 = now();
    for (int w = 0; w < workers; w++) {
        if (fork() == 0) {
            long n = loop(seconds, rate, argv + 4);
            dprintf(fds[1], "%ld\n", n);
            _exit(0);
        }
    }
    close(fds[1]);
    long total = 0;
    FILE *f = fdopen(fds[0], "r");
    long n;
    while (fscanf(f, "%ld", &n) == 1) total += n;
    while (wait(NULL) > 0) {}
    printf("%ld %.3f\n", total, now() - t0);
    return 0;
}
