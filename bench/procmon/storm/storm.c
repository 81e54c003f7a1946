/*
 * storm: a small exec storm generator for the procmon benchmark.
 *
 *   storm -r RATE -d SECONDS -t TARGET [-w WORKERS] [-o PIDLOG] [-P]
 *         [-M MSGS [-f comm|proc|thread]]
 *
 * WORKERS processes (default 2) each vfork+execve TARGET at RATE/WORKERS
 * per second, paced against CLOCK_MONOTONIC, for SECONDS. Worker w runs
 * pinned to the (w mod N)-th of the N CPUs it may run on (-P: not pinned):
 * an unpinned exec storm spends its time in the kernel migrating each new
 * child to another CPU at exec (sched_exec) and waking the parent across
 * CPUs, and reaches less than half the rate. Children are reaped by the kernel
 * (SIGCHLD ignored). Each worker logs "pid wall_ns" for every child to
 * PIDLOG.N, so the benchmark can tell the storm's execs from the rest of
 * the machine's even after pids wrap. It prints the number generated and
 * the achieved rate; when the machine cannot reach RATE, it runs as fast as
 * it can for SECONDS.
 *
 * -M MSGS adds a filler process that brings the proc connector's message
 * rate up to MSGS per second, counting three messages (fork, exec, exit)
 * for every exec of the storm so far. It makes up the difference with
 * prctl(PR_SET_NAME) calls (-f comm, the default: one comm message each,
 * a few microseconds, so the exec workers keep most of the CPU), processes
 * that vfork, rename themselves and _exit (-f proc: a fork, a comm and an
 * exit message, the shape of a storm child's three with a comm change
 * where the exec was, but 50 us of CPU each) or threads created and
 * joined (-f thread: fork and exit messages with tid != pid). The
 * filler is pinned as a worker numbered WORKERS would be (-P: not pinned)
 * and runs at nice -5 when it may, so that it gets the CPU it needs and the
 * exec workers the rest. It stands in for the message load of an exec
 * storm the machine cannot run; it is not one (no exec, nothing to read in
 * /proc).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int execfailed;
static const char *target;
static char *cargv[3];
static char *cenvp[] = {NULL};

static long long ns(clockid_t c) {
	struct timespec ts;
	clock_gettime(c, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(long long due) {
	struct timespec ts = {due / 1000000000LL, due % 1000000000LL};
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* pin binds the calling process to the (w mod N)-th CPU it may run on. */
static int pin(int w) {
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
	int n = CPU_COUNT(&set), k = w % n;
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, &set)) continue;
		if (k-- == 0) {
			CPU_ZERO(&set);
			CPU_SET(c, &set);
			return sched_setaffinity(0, sizeof set, &set) == 0 ? c : -1;
		}
	}
	return -1;
}

static void *thread_exit(void *arg) { return arg; }

/* filler tops the connector's message rate up to msgs per second, counting
 * three messages per storm exec in execs[0..workers). */
static void filler(double msgs, const char *kind, long long start, long long end,
		   volatile long long *execs, int workers, int cpu) {
	int per = strcmp(kind, "comm") == 0 ? 1 : strcmp(kind, "thread") == 0 ? 2 : 3;
	long long units = 0, failures = 0;
	int nice = setpriority(PRIO_PROCESS, 0, -5) == 0 ? -5 : 0;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 16384);
	for (;;) {
		long long now = ns(CLOCK_MONOTONIC);
		if (now >= end) break;
		long long storm = 0;
		for (int w = 0; w < workers; w++) storm += __atomic_load_n(&execs[w], __ATOMIC_RELAXED);
		double want = msgs * (double)(now - start) / 1e9;
		if ((double)(3 * storm + per * units + per) > want) {
			sleep_until(now + 200000); /* 0.2 ms */
			continue;
		}
		/* Behind: catch up in a burst of at most 64 units. */
		for (int i = 0; i < 64 && (double)(3 * storm + per * units + per) <= want; i++) {
			if (per == 1) {
				prctl(PR_SET_NAME, (units & 1) ? "vigil-filler-a" : "vigil-filler-b");
			} else if (per == 3) {
				pid_t c = vfork();
				if (c == 0) {
					prctl(PR_SET_NAME, "vigil-filler");
					_exit(0);
				}
				if (c < 0) { failures++; continue; }
			} else {
				pthread_t t;
				if (pthread_create(&t, &attr, thread_exit, NULL) != 0) { failures++; continue; }
				pthread_join(t, NULL);
			}
			units++;
		}
	}
	double took = (ns(CLOCK_MONOTONIC) - start) / 1e9;
	long long storm = 0;
	for (int w = 0; w < workers; w++) storm += execs[w];
	char where[48] = "not pinned";
	if (cpu >= 0) snprintf(where, sizeof where, "on cpu %d", cpu);
	snprintf(where + strlen(where), sizeof where - strlen(where), ", nice %d", nice);
	printf("filler (%s) made %lld %s (%lld messages, %.0f/s) in %.3fs, %lld failures; storm + filler: %.0f messages/s, asked %.0f\n",
	       where, units, per == 1 ? "comm changes" : per == 2 ? "threads" : "processes",
	       per * units, per * units / took, took, failures, (3 * storm + per * units) / took, msgs);
	fflush(stdout);
}

int main(int argc, char **argv) {
	double rate = 1000, secs = 10, msgs = 0;
	int workers = 2, pinned = 1;
	const char *pidlog = NULL, *kind = "comm";
	int opt;
	target = "/bin/true";
	while ((opt = getopt(argc, argv, "r:d:t:w:o:PM:f:")) != -1) {
		switch (opt) {
		case 'r': rate = atof(optarg); break;
		case 'd': secs = atof(optarg); break;
		case 't': target = optarg; break;
		case 'w': workers = atoi(optarg); break;
		case 'o': pidlog = optarg; break;
		case 'P': pinned = 0; break;
		case 'M': msgs = atof(optarg); break;
		case 'f': kind = optarg; break;
		default:
			fprintf(stderr, "usage: storm -r RATE -d SECONDS -t TARGET [-w WORKERS] [-o PIDLOG] [-P] "
					"[-M MSGS [-f comm|proc|thread]]\n");
			return 2;
		}
	}
	if (workers < 1) workers = 1;
	if (strcmp(kind, "proc") != 0 && strcmp(kind, "thread") != 0 && strcmp(kind, "comm") != 0) {
		fprintf(stderr, "storm: -f %s: want comm, proc or thread\n", kind);
		return 2;
	}
	cargv[0] = (char *)target;
	cargv[1] = "vigil-storm";
	/* Execs so far, per worker, for the filler. */
	volatile long long *execs = mmap(NULL, (size_t)workers * sizeof(long long), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (execs == MAP_FAILED) { perror("mmap"); return 1; }
	long long start = ns(CLOCK_MONOTONIC);
	long long end = start + (long long)(secs * 1e9);
	for (int w = 0; w < workers + (msgs > 0); w++) {
		pid_t p = fork();
		if (p < 0) { perror("fork"); return 1; }
		if (p > 0) continue;
		signal(SIGCHLD, SIG_IGN);
		int cpu = pinned ? pin(w) : -1;
		if (pinned && cpu < 0) { perror("sched_setaffinity"); _exit(1); }
		if (w == workers) {
			filler(msgs, kind, start, end, execs, workers, cpu);
			_exit(0);
		}
		double wrate = rate / workers;
		long long total = (long long)(wrate * secs);
		long long *log = pidlog ? calloc((size_t)total * 2 + 2, sizeof(long long)) : NULL;
		long long n = 0, fails = 0, execfails = 0;
		long long period = (long long)(1e9 / wrate);
		for (; n < total; n++) {
			long long due = start + n * period;
			long long now = ns(CLOCK_MONOTONIC);
			if (now >= end)
				break; /* behind schedule: the rate was out of reach */
			if (due > now) sleep_until(due);
			/* The vfork child shares this memory until it
			 * execs or exits, so it can say that execve failed:
			 * such a child made no exec event and must not count
			 * as generated. */
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
			__atomic_store_n(&execs[w], n + 1, __ATOMIC_RELAXED);
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
		char where[32] = "not pinned";
		if (cpu >= 0) snprintf(where, sizeof where, "on cpu %d", cpu);
		printf("worker %d (%s) generated %lld execs in %.3fs (%.0f/s), %lld fork failures, %lld exec failures\n",
		       w, where, n, took, n / took, fails, execfails);
		fflush(stdout);
		_exit(0);
	}
	int st, bad = 0;
	while (wait(&st) > 0)
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
	return bad;
}
