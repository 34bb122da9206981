// SPDX-License-Identifier: GPL-2.0
/*
 * pft_cases - the kernel's own aarch64/page_fault_test, one case per child process, so that a
 * failing (or livelocked) case is recorded and the others still run.  Prints one line per
 * case: "@R pft NAME pass|fail|skip|timeout" (bench/kvm/check.py parse_pft).
 *
 * page_fault_test.c is included unchanged; only its main() is renamed.
 */
#include <sys/wait.h>
#define main page_fault_test_main
#include "page_fault_test.c"
#undef main

#define CASE_TIMEOUT_S	20
#define EXIT_SKIPPED	4

static int run_case(struct test_desc *t, enum vm_mem_backing_src_type src_type)
{
	struct test_params p = { .src_type = src_type, .test_desc = t };

	alarm(CASE_TIMEOUT_S);
	for_each_guest_mode(run_test, &p);
	return t->skip ? EXIT_SKIPPED : 0;
}

int main(int argc, char *argv[])
{
	enum vm_mem_backing_src_type src_type = DEFAULT_VM_MEM_SRC;
	int opt, status;

	while ((opt = getopt(argc, argv, "m:s:")) != -1) {
		if (opt == 'm')
			guest_modes_cmdline(optarg);
		else if (opt == 's')
			src_type = parse_backing_src_type(optarg);
	}
	for (struct test_desc *t = &tests[0]; t->name; t++) {
		pid_t pid;
		const char *res;

		if (t->skip)
			continue;
		fflush(stdout);
		pid = fork();
		if (pid == 0)
			exit(run_case(t, src_type));
		waitpid(pid, &status, 0);
		if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
			res = "timeout";
		else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
			res = "pass";
		else if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIPPED)
			res = "skip";
		else
			res = "fail";
		printf("@R pft %s %s\n", t->name, res);
		fflush(stdout);
	}
	return 0;
}
