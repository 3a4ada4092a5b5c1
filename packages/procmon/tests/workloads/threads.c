/*
 * A multithreaded process whose group ends after its leader:
 *   all7   the leader leaves at once with SYS_exit(7); 4 workers leave 100 ms later with
 *          SYS_exit(7)  -> one process exit, status 7, at the last worker's exit
 *   mixed  the same, but the workers leave with SYS_exit(3): the status is the last
 *          thread's 3 on Linux >= 5.19 (synchronize_group_exit), the leader's 7 before
 *   group  a worker calls exit(5) (exit_group) while the leader waits -> status 5
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *mode = "all7";

static void *worker(void *arg)
{
	(void)arg;
	usleep(100000);
	if (strcmp(mode, "group") == 0)
		exit(5);
	syscall(SYS_exit, strcmp(mode, "mixed") == 0 ? 3 : 7);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t;

	if (argc > 1)
		mode = argv[1];
	for (int i = 0; i < 4; i++)
		if (pthread_create(&t, NULL, worker, NULL))
			return 99;
	if (strcmp(mode, "group") == 0)
		for (;;)
			pause();
	syscall(SYS_exit, 7); /* only this thread: the group lives on */
	return 98;
}
