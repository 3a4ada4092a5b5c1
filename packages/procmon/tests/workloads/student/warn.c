#include <stdio.h>

int main(void)
{
	int unused;
	printf("clang %d\n", 1);
	return 0;
}
