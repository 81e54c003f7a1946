/* child: the smallest static program, the exec target of the storm. It
 * exits at once with status 0, so the storm measures exec handling and not
 * the work of the child. */
void _start(void) {
	__asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall");
	__builtin_unreachable();
}
