/*
 * storm: a small exec storm generator for the procmon benchmark.
 *
 *   storm -r RATE -d SECONDS -t TARGET [-w WORKERS] [-o PIDLOG]
 *
 * WORKERS processes (default 2) each vfork+execve TARGET at RATE/WORKERS
 * per second, paced against CLOCK_MONOTONIC, for SECONDS. Children are
 * reaped by the kernel (SIGCHLD ignored). Each worker logs "pid wall_ns"
 * for every child to PIDLOG.N, so the benchmark can tell the storm's
 * execs from the rest of the machine's even after pids wrap. It prints
 * the number generated and the achieved rate; when the machine cannot
 * reach RATE, it runs as fast as it can for SECONDS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int execfailed;

static long long ns(clockid_t c) {
	struct timespec ts;
	clock_gettime(c, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
	double rate = 1000, secs = 10;
	int workers = 2;
	const char *target = "/bin/true", *pidlog = NULL;
	int opt;
	while ((opt = getopt(argc, argv, "r:d:t:w:o:")) != -1) {
		switch (opt) {
		case 'r': rate = atof(optarg); break;
		case 'd': secs = atof(optarg); break;
		case 't': target = optarg; break;
		case 'w': workers = atoi(optarg); break;
		case 'o': pidlog = optarg; break;
		default:
			fprintf(stderr, "usage: storm -r RATE -d SECONDS -t TARGET [-w WORKERS] [-o PIDLOG]\n");
			return 2;
		}
	}
	if (workers < 1) workers = 1;
	long long start = ns(CLOCK_MONOTONIC);
	for (int w = 0; w < workers; w++) {
		pid_t p = fork();
		if (p < 0) { perror("fork"); return 1; }
		if (p > 0) continue;
		signal(SIGCHLD, SIG_IGN);
		double wrate = rate / workers;
		long long total = (long long)(wrate * secs);
		long long *log = pidlog ? calloc((size_t)total * 2 + 2, sizeof(long long)) : NULL;
		char *cargv[] = {(char *)target, "vigil-storm", NULL};
		char *cenvp[] = {NULL};
		long long n = 0, fails = 0, execfails = 0;
		long long period = (long long)(1e9 / wrate);
		long long end = start + (long long)(secs * 1e9);
		for (; n < total; n++) {
			long long due = start + n * period;
			long long now = ns(CLOCK_MONOTONIC);
			if (now >= end)
				break; /* behind schedule: the rate was out of reach */
			if (due > now) {
				struct timespec ts = {due / 1000000000LL, due % 1000000000LL};
				clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
			}
			/* The vfork child shares this memory until it execs or
			 * exits, so it can say that execve failed: such a child
			 * made no exec event and must not count as generated. */
			execfailed = 0;
			pid_t c = vfork();
			if (c == 0) {
				execve(target, cargv, cenvp);
				execfailed = 1;
				_exit(127);
			}
			if (c < 0) { fails++; n--; continue; }
			if (execfailed) { execfails++; n--; continue; }
			if (log) { log[2 * n] = c; log[2 * n + 1] = ns(CLOCK_REALTIME); }
		}
		double took = (ns(CLOCK_MONOTONIC) - start) / 1e9;
		if (log) {
			char path[4096];
			snprintf(path, sizeof path, "%s.%d", pidlog, w);
			FILE *f = fopen(path, "w");
			if (!f) { perror(path); _exit(1); }
			for (long long i = 0; i < n; i++) fprintf(f, "%lld %lld\n", log[2 * i], log[2 * i + 1]);
			fclose(f);
		}
		printf("worker %d generated %lld execs in %.3fs (%.0f/s), %lld fork failures, %lld exec failures\n", w, n, took, n / took, fails, execfails);
		fflush(stdout);
		_exit(0);
	}
	int st, bad = 0;
	while (wait(&st) > 0)
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
	return bad;
}
