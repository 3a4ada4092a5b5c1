#include <iostream>
#include "util.h"

int main()
{
	std::cout << twice(21) << std::endl;
	return 0;
}
