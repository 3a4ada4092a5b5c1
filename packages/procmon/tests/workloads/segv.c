/* Dies of SIGSEGV (a core is dumped if RLIMIT_CORE and core_pattern allow it). */
int main(void)
{
	volatile int *p = 0;

	*p = 1;
	return 0;
}
