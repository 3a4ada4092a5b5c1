int main(void)
{
	int x = "not an int" + ;
	return undeclared_name;
}
