// SPDX-License-Identifier: GPL-2.0
/*
 * ptw_replay - replay one ptwbench micro-scenario (docs/scenario-format.md) in a KVM/arm64
 * guest and print what the kernel did: every stage-2 abort KVM takes (kvm:kvm_guest_fault
 * from tracefs, filtered to the scenario's memslots), userfaultfd events with their flags,
 * MMIO exits, failed KVM_RUNs, guest-visible exceptions and the harvested dirty bitmaps.
 *
 * Built inside tools/testing/selftests/kvm (the KVM selftests library: VMs, memslots, uffd,
 * dirty log, ucalls).  Input: the line-based replay script written by `ptwbench kvm`
 * (bench/kvm_cmd.py, export_script), on stdin or in argv[1].  Output: lines starting with
 * "@R " on stdout, parsed by bench/kvm_cmd.py (parse_replay).
 *
 * The scenario's stage-1 tables are the ones the script lists (the layout of
 * docs/scenario-format.md, written into the page-table slot); the guest reaches them through
 * TTBR1_EL1, so the scenario's walks use only the scenario's tables while the selftests
 * library keeps its own TTBR0_EL1 tables (code, stack, ucalls) in memslot 0.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/userfaultfd.h>
#include <test_util.h>
#include <kvm_util.h>
#include <processor.h>
#include <ucall_common.h>

#define MAX_SLOTS	16
#define MAX_VCPUS	8
#define MAX_STEPS	100000
#define PAGE		4096ul
#define DESC_AF		(1ul << 10)
#define TCR_HA_BIT	(1ul << 39)
#define TCR_HD_BIT	(1ul << 40)
#define RET_INSN	0xd65f03c0u	/* ret */
#define EXEC_OFFSET	0xff0ul		/* where an exec step branches inside its page */
#define TRACE		"/sys/kernel/tracing/"
#define STEP_TIMEOUT_S	20

enum { OP_NONE, OP_READ64, OP_WRITE64, OP_LD_PREIDX, OP_ST_PREIDX, OP_CAS, OP_DC_ZVA,
       OP_EXEC, OP_AT, OP_STORE_DESC, OP_TLBI_ALL };

struct guest_cmd {
	uint64_t op, va, val, tlbi_va;
};

/* Shared with the guest (memslot 0): one command per vCPU. */
static struct guest_cmd cmds[MAX_VCPUS];
static volatile uint64_t exc_esr, exc_far, exc_count;

struct slot {
	uint64_t ipa, pages;
	int readonly, log_dirty, populated, resolve_slot;
	char backing[16], uffd[16];
	uint8_t *hva, *snapshot;
	int uffd_fd;
	pthread_t reader;
	uint32_t flags;
};

static struct slot slots[MAX_SLOTS];
static int nslots, nvcpus = 1, mmio_store, manual_protect, cur_step = -1;
static uint64_t tcr_ha, tcr_hd;
static struct kvm_vm *vm;
static struct kvm_vcpu *vcpus[MAX_VCPUS];
static int stopped[MAX_VCPUS];
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

#define OUT(...) do { pthread_mutex_lock(&out_lock); printf("@R " __VA_ARGS__); \
		      fflush(stdout); pthread_mutex_unlock(&out_lock); } while (0)

/* ---- guest side ---------------------------------------------------------------------- */

static void guest_sync_exception(struct ex_regs *regs)
{
	uint64_t esr = read_sysreg(esr_el1);

	exc_esr = esr;
	exc_far = read_sysreg(far_el1);
	exc_count++;
	/* exec step (instruction abort, or an undefined instruction: a page of zeros after a
	 * hole): return to the caller */
	if ((esr >> 26) == ESR_EC_IABT || (esr >> 26) == ESR_EC_UNKNOWN)
		regs->pc = regs->regs[30];
	else
		regs->pc += 4;			/* skip the faulting access */
}

static void guest_do(struct guest_cmd *c)
{
	uint64_t v = 0, a = c->va;

	switch (c->op) {
	case OP_READ64:
		asm volatile("ldr %0, [%1]" : "=r"(v) : "r"(a) : "memory");
		break;
	case OP_WRITE64:
		asm volatile("str %0, [%1]" : : "r"(c->val), "r"(a) : "memory");
		break;
	case OP_LD_PREIDX:
		asm volatile("ldr %0, [%1, #0]!" : "=r"(v), "+r"(a) : : "memory");
		break;
	case OP_ST_PREIDX:
		asm volatile("str %1, [%0, #0]!" : "+r"(a) : "r"(c->val) : "memory");
		break;
	case OP_CAS:
		asm volatile(".arch_extension lse\n\tcasal %0, %1, [%2]"
			     : "+r"(v) : "r"(c->val), "r"(a) : "memory");
		break;
	case OP_DC_ZVA:
		asm volatile("dc zva, %0" : : "r"(a) : "memory");
		break;
	case OP_EXEC:
		((void (*)(void))a)();
		break;
	case OP_AT:		/* a stage-1 fault sets PAR_EL1.F, FST = the DFSC: no exception */
		asm volatile("at s1e1r, %1\n\tisb\n\tmrs %0, par_el1" : "=r"(v) : "r"(a)
			     : "memory");
		if (v & 1) {
			exc_esr = (uint64_t)ESR_EC_DABT << 26 | ((v >> 1) & 0x3f);
			exc_far = a;
			exc_count++;
		}
		break;
	case OP_STORE_DESC:			/* clear_af: one STR, then TLBI VAAE1IS */
		asm volatile("str %0, [%1]" : : "r"(c->val), "r"(a) : "memory");
		dsb(ish);
		asm volatile("tlbi vaae1is, %0" : : "r"(c->tlbi_va) : "memory");
		dsb(ish);
		isb();
		break;
	case OP_TLBI_ALL:
		dsb(ish);
		asm volatile("tlbi vmalle1is" : : : "memory");
		dsb(ish);
		isb();
		break;
	}
	(void)v;
}

static void guest_code(uint64_t id)
{
	for (;;) {
		GUEST_SYNC_ARGS(0, 0, 0, 0, 0);		/* host fills cmds[id] */
		exc_count = 0;
		guest_do(&cmds[id]);
		GUEST_SYNC_ARGS(1, exc_count, exc_esr, exc_far, 0);
	}
}

/* ---- host side: tracefs ------------------------------------------------------------------ */

static void write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_TRUNC);

	if (fd < 0 || write(fd, s, strlen(s)) < 0) {
		OUT("error cannot write %s\n", path);
		exit(2);
	}
	close(fd);
}

static int slot_of_ipa(uint64_t ipa)
{
	for (int i = 0; i < nslots; i++)
		if (ipa >= slots[i].ipa && ipa < slots[i].ipa + slots[i].pages * PAGE)
			return i;
	return -1;
}

/* Every kvm_guest_fault since the last call whose IPA lies in a scenario slot. */
static void drain_trace(void)
{
	static char *buf;		/* malloc'ed: the guest image holds .bss too */
	const size_t size = 1 << 20;
	unsigned long long ipa, esr, far, pc;
	int fd = open(TRACE "trace", O_RDONLY);
	ssize_t n = 0, r;
	char *p, *q;

	if (!buf)
		buf = malloc(size);
	while (fd >= 0 && n < (ssize_t)size - 1 && (r = read(fd, buf + n, size - 1 - n)) > 0)
		n += r;
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	for (p = buf; p && *p; p = q ? q + 1 : NULL) {
		q = strchr(p, '\n');
		if (q)
			*q = 0;
		char *e = strstr(p, "kvm_guest_fault: ");

		if (e && sscanf(e, "kvm_guest_fault: ipa %llx, hsr %llx, hxfar %llx, pc %llx",
				&ipa, &esr, &far, &pc) == 4 && slot_of_ipa(ipa) >= 0)
			OUT("fault %d %#llx %#llx %#llx\n", cur_step, ipa, esr, far);
	}
	write_file(TRACE "trace", "");
}

/* ---- host side: userfaultfd -------------------------------------------------------------- */

/* A resolution that fails leaves the vCPU faulting on the same page forever: stop. */
static void uffd_failed(const char *what)
{
	OUT("error %s errno %d at step %d\n", what, errno, cur_step);
	OUT("end\n");
	_exit(3);
}

static void uffd_resolve(struct slot *s, uint64_t page, int wp, int minor)
{
	uint64_t first = s->resolve_slot ? 0 : page, last = s->resolve_slot ? s->pages : page + 1;

	if (wp) {				/* userspace unprotects the page */
		struct uffdio_writeprotect w = { .range = { (uint64_t)s->hva + page * PAGE, PAGE },
						 .mode = 0 };
		if (ioctl(s->uffd_fd, UFFDIO_WRITEPROTECT, &w))
			uffd_failed("UFFDIO_WRITEPROTECT(0)");
		return;
	}
	for (uint64_t p = first; p < last && minor; p++) {	/* page cache -> mapping */
		struct uffdio_continue c = { .range = { (uint64_t)s->hva + p * PAGE, PAGE },
					     .mode = UFFDIO_CONTINUE_MODE_DONTWAKE };
		if (ioctl(s->uffd_fd, UFFDIO_CONTINUE, &c) && errno != EEXIST)
			uffd_failed("UFFDIO_CONTINUE");
	}
	for (uint64_t p = first; p < last && !minor; p++) {
		struct uffdio_copy c = { .dst = (uint64_t)s->hva + p * PAGE,
					 .src = (uint64_t)s->snapshot + p * PAGE,
					 .len = PAGE, .mode = UFFDIO_COPY_MODE_DONTWAKE };
		if (ioctl(s->uffd_fd, UFFDIO_COPY, &c) && errno != EEXIST)
			uffd_failed("UFFDIO_COPY");
	}
	struct uffdio_range wake = { (uint64_t)s->hva + first * PAGE, (last - first) * PAGE };

	ioctl(s->uffd_fd, UFFDIO_WAKE, &wake);
}

static void *uffd_reader(void *arg)
{
	struct slot *s = arg;
	struct pollfd pfd = { .fd = s->uffd_fd, .events = POLLIN };
	struct uffd_msg msg;
	uint64_t last_page = -1ul, repeats = 0;

	for (;;) {
		if (poll(&pfd, 1, -1) < 0 || (pfd.revents & (POLLERR | POLLHUP)))
			return NULL;
		if (read(s->uffd_fd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		uint64_t f = msg.arg.pagefault.flags;
		uint64_t page = (msg.arg.pagefault.address - (uint64_t)s->hva) / PAGE;
		const char *mode = (f & UFFD_PAGEFAULT_FLAG_WP) ? "wp" :
				   (f & UFFD_PAGEFAULT_FLAG_MINOR) ? "minor" : "missing";

		OUT("uffd %d %d %lu %s %d\n", cur_step, (int)(s - slots), page, mode,
		    !!(f & UFFD_PAGEFAULT_FLAG_WRITE));
		if (page == last_page && ++repeats > 1000)
			uffd_failed("uffd resolution (the same fault 1000 times)");
		if (page != last_page)
			repeats = 0;
		last_page = page;
		uffd_resolve(s, page, f & UFFD_PAGEFAULT_FLAG_WP, f & UFFD_PAGEFAULT_FLAG_MINOR);
	}
}

static void uffd_register(struct slot *s)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	struct uffdio_register reg = { .range = { (uint64_t)s->hva, s->pages * PAGE } };

	if (!strcmp(s->uffd, "missing"))
		reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	else if (!strcmp(s->uffd, "wp"))
		reg.mode = UFFDIO_REGISTER_MODE_WP;
	else
		reg.mode = UFFDIO_REGISTER_MODE_MINOR;
	s->uffd_fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	TEST_ASSERT(s->uffd_fd >= 0, "userfaultfd");
	TEST_ASSERT(!ioctl(s->uffd_fd, UFFDIO_API, &api), "UFFDIO_API");
	TEST_ASSERT(!ioctl(s->uffd_fd, UFFDIO_REGISTER, &reg), "UFFDIO_REGISTER");
	pthread_create(&s->reader, NULL, uffd_reader, s);
}

/* ---- host side: the scenario ------------------------------------------------------------- */

static enum vm_mem_backing_src_type backing_type(const char *b)
{
	if (!strcmp(b, "anon_thp"))
		return VM_MEM_SRC_ANONYMOUS_THP;
	if (!strcmp(b, "hugetlb"))
		return VM_MEM_SRC_ANONYMOUS_HUGETLB_2MB;
	if (!strcmp(b, "shmem"))
		return VM_MEM_SRC_SHMEM;
	return VM_MEM_SRC_ANONYMOUS;
}

static void add_slot(char *line)
{
	struct slot *s = &slots[nslots];
	unsigned long long ipa, pages;

	TEST_ASSERT(nslots < MAX_SLOTS, "too many slots");
	TEST_ASSERT(sscanf(line, "slot %llx %llu %d %d %15s %d %15s %d", &ipa, &pages,
			   &s->readonly, &s->log_dirty, s->backing, &s->populated, s->uffd,
			   &s->resolve_slot) == 8, "bad slot line: %s", line);
	s->ipa = ipa;
	s->pages = pages;
	s->flags = (s->readonly ? KVM_MEM_READONLY : 0) |
		   (s->log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0);
	vm_userspace_mem_region_add(vm, backing_type(s->backing), ipa, 1 + nslots, pages,
				    s->flags);
	s->hva = addr_gpa2hva(vm, ipa);
	if (s->populated)
		memset(s->hva, 0, pages * PAGE);	/* present and writable */
	nslots++;
}

static void write_desc(char *line)
{
	unsigned long long ipa, val;

	TEST_ASSERT(sscanf(line, "desc %llx %llx", &ipa, &val) == 2, "bad desc: %s", line);
	*(uint64_t *)addr_gpa2hva(vm, ipa) = val;
}

static void write_exec(char *line)
{
	unsigned long long ipa;

	TEST_ASSERT(sscanf(line, "exec %llx", &ipa) == 1, "bad exec: %s", line);
	*(uint32_t *)addr_gpa2hva(vm, ipa + EXEC_OFFSET) = RET_INSN;
}

static void punch(struct slot *s, uint64_t first, uint64_t count);

/* After the tables are written: snapshot (uffd resolutions restore it), unpopulate, uffd. */
static void finish_slots(void)
{
	for (int i = 0; i < nslots; i++) {
		struct slot *s = &slots[i];

		s->snapshot = malloc(s->pages * PAGE);
		memcpy(s->snapshot, s->hva, s->pages * PAGE);
		if (!s->populated)		/* missing: what a hole leaves (zeros) */
			punch(s, 0, s->pages);
		if (strcmp(s->uffd, "none"))
			uffd_register(s);
	}
}

/* MADV_DONTNEED / FALLOC_FL_PUNCH_HOLE (page_fault_test.c punch_hole_in_backing_store);
 * a shmem slot under uffd MINOR keeps its page cache (only the mapping goes), so that the
 * next touch is a minor fault. */
static void punch(struct slot *s, uint64_t first, uint64_t count)
{
	struct userspace_mem_region *r = memslot2region(vm, 1 + (int)(s - slots));
	int shared = !strcmp(s->backing, "shmem");

	if (shared && strcmp(s->uffd, "minor"))
		TEST_ASSERT(!fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       r->offset + first * PAGE, count * PAGE), "fallocate");
	TEST_ASSERT(!madvise(s->hva + first * PAGE, count * PAGE, MADV_DONTNEED), "madvise");
}

/* An MMU-notifier invalidation with the host pages unchanged: the NUMA-hinting route
 * (change_protection() -> mmu_notifier_invalidate_range_start() -> kvm_unmap_gfn_range()),
 * then the protection back (mprotect makes exclusive anon / dirty shared PTEs writable
 * again: can_change_pte_writable()). */
static void zap(struct slot *s, uint64_t first, uint64_t count)
{
	int prot = s->readonly ? PROT_READ : PROT_READ | PROT_WRITE;

	TEST_ASSERT(!mprotect(s->hva + first * PAGE, count * PAGE, PROT_NONE), "mprotect");
	TEST_ASSERT(!mprotect(s->hva + first * PAGE, count * PAGE, prot), "mprotect");
}

static void uffd_wp(struct slot *s, uint64_t first, uint64_t count)
{
	struct uffdio_writeprotect w = { .range = { (uint64_t)s->hva + first * PAGE,
						     count * PAGE },
					 .mode = UFFDIO_WRITEPROTECT_MODE_WP };

	TEST_ASSERT(!ioctl(s->uffd_fd, UFFDIO_WRITEPROTECT, &w), "UFFDIO_WRITEPROTECT");
}

static void print_bitmap(const char *what, int si, unsigned long *bmap)
{
	char line[65536];
	int n = 0;

	line[0] = 0;
	for (uint64_t p = 0; p < slots[si].pages && n < (int)sizeof(line) - 24; p++)
		if (bmap[p / 64] & (1ul << (p % 64)))
			n += snprintf(line + n, sizeof(line) - n, "%s%lu", n ? "," : "", p);
	OUT("%s %d %d %s\n", what, cur_step, si, n ? line : "-");
}

/* GET_DIRTY_LOG (+ CLEAR_DIRTY_LOG of every returned bit with manual protect). */
static void harvest(int si, const char *what)
{
	uint64_t words = (slots[si].pages + 63) / 64;
	unsigned long *bmap = calloc(words, 8);

	kvm_vm_get_dirty_log(vm, 1 + si, bmap);
	if (manual_protect)
		kvm_vm_clear_dirty_log(vm, 1 + si, bmap, 0, words * 64 > slots[si].pages ?
				       slots[si].pages : words * 64);
	print_bitmap(what, si, bmap);
	free(bmap);
}

static void on_timeout(int sig)
{
	char msg[64];
	int n = snprintf(msg, sizeof(msg), "\n@R timeout %d\n@R end\n", cur_step);

	/* write(2), not stdio: the signal may land in a thread holding stdout's lock */
	if (write(1, msg, n) < 0)
		_exit(4);
	_exit(3);
}

/* Run one guest command on one vCPU to completion (UCALL_SYNC stage 1). */
static void run_cmd(int v, struct guest_cmd c)
{
	struct ucall uc;

	if (stopped[v])
		return;
	cmds[v] = c;
	sync_global_to_guest(vm, cmds);
	for (;;) {
		if (_vcpu_run(vcpus[v])) {	/* io_mem_abort(): ENOSYS without a syndrome */
			OUT("runfail %d %d %d\n", cur_step, v, errno);
			stopped[v] = 1;
			break;
		}
		switch (get_ucall(vcpus[v], &uc)) {
		case UCALL_SYNC:
			if (uc.args[1] == 0)
				continue;
			if (uc.args[2])
				OUT("gexc %d %d %#lx %#lx\n", cur_step, v, uc.args[3], uc.args[4]);
			goto done;
		case UCALL_ABORT:
			REPORT_GUEST_ASSERT(uc);
			break;
		case UCALL_NONE: {
			struct kvm_run *run = vcpus[v]->run;
			int si = slot_of_ipa(run->mmio.phys_addr);

			TEST_ASSERT(run->exit_reason == KVM_EXIT_MMIO && si >= 0,
				    "unexpected exit %d", run->exit_reason);
			OUT("mmio %d %d %#llx %d\n", cur_step, v, run->mmio.phys_addr,
			    run->mmio.is_write);
			if (mmio_store && run->mmio.is_write)	/* mmio_on_test_gpa_handler */
				memcpy(addr_gpa2hva(vm, run->mmio.phys_addr), run->mmio.data,
				       run->mmio.len);
			break;
		}
		default:
			TEST_FAIL("unknown ucall %lu", uc.cmd);
		}
	}
done:
	return;
}

/* The guest starts each command from GUEST_SYNC(0): run every vCPU up to it once. */
static void start_vcpus(void)
{
	struct ucall uc;

	for (int v = 0; v < nvcpus; v++) {
		vcpu_run(vcpus[v]);
		TEST_ASSERT(get_ucall(vcpus[v], &uc) == UCALL_SYNC && uc.args[1] == 0,
			    "vCPU %d did not start", v);
	}
}

/* clear_af's value: the descriptor as guest memory holds it now (read through the host
 * mapping where the page is resident, so no uffd event; else the snapshot), AF cleared. */
static uint64_t desc_now(uint64_t ipa)
{
	int si = slot_of_ipa(ipa);
	struct slot *s = &slots[si];
	uint64_t off = ipa - s->ipa;
	unsigned char vec;

	if (!mincore((void *)((uint64_t)(s->hva + off) & ~(PAGE - 1)), PAGE, &vec) && (vec & 1))
		return *(uint64_t *)(s->hva + off);
	return *(uint64_t *)(s->snapshot + off);
}

static void set_tcr(int ha, int hd)
{
	for (int v = 0; v < nvcpus; v++) {
		uint64_t tcr;

		vcpu_get_reg(vcpus[v], KVM_ARM64_SYS_REG(SYS_TCR_EL1), &tcr);
		tcr = (tcr & ~(TCR_HA_BIT | TCR_HD_BIT)) | (ha ? TCR_HA_BIT : 0) |
		      (hd ? TCR_HD_BIT : 0);
		vcpu_set_reg(vcpus[v], KVM_ARM64_SYS_REG(SYS_TCR_EL1), tcr);
	}
	run_cmd(0, (struct guest_cmd){ .op = OP_TLBI_ALL });
}

static const char *const kinds[] = { "", "read64", "write64", "ld_preidx", "st_preidx",
				     "cas", "dc_zva", "exec", "at" };

static void do_step(char *line)
{
	char op[32], a1[32];
	unsigned long long x, y, z;
	int n, v;

	TEST_ASSERT(sscanf(line, "step %d %31s", &n, op) == 2, "bad step: %s", line);
	cur_step = n;
	alarm(STEP_TIMEOUT_S);			/* host ops and uffd included */
	char *rest = strchr(strchr(line + 5, ' ') + 1, ' ');

	rest = rest ? rest + 1 : (char *)"";
	if (!strcmp(op, "access")) {
		TEST_ASSERT(sscanf(rest, "%d %llx %31s", &v, &x, a1) == 3, "bad access");
		struct guest_cmd c = { .va = x, .val = 0x0123456789abcdefull };

		for (c.op = 1; c.op <= OP_AT && strcmp(kinds[c.op], a1); c.op++)
			;
		TEST_ASSERT(c.op <= OP_AT, "bad kind %s", a1);
		if (c.op == OP_EXEC)
			c.va = (x & ~(PAGE - 1)) + EXEC_OFFSET;
		run_cmd(v, c);
	} else if (!strcmp(op, "clear_af")) {	/* vcpu va pte_ipa */
		TEST_ASSERT(sscanf(rest, "%d %llx %llx", &v, &x, &y) == 3, "bad clear_af");
		run_cmd(v, (struct guest_cmd){ .op = OP_STORE_DESC, .va = y,
			.val = desc_now(y) & ~DESC_AF, .tlbi_va = (x >> 12) & ((1ul << 44) - 1) });
	} else if (!strcmp(op, "set_tcr")) {
		TEST_ASSERT(sscanf(rest, "%llu %llu", &x, &y) == 2, "bad set_tcr");
		tcr_ha = x, tcr_hd = y;
		set_tcr(x, y);
	} else if (!strcmp(op, "flush_tlb")) {
		TEST_ASSERT(sscanf(rest, "%d", &v) == 1, "bad flush_tlb");
		run_cmd(v, (struct guest_cmd){ .op = OP_TLBI_ALL });
	} else if (!strcmp(op, "enable_dirty_log")) {
		TEST_ASSERT(sscanf(rest, "%d", &v) == 1, "bad enable_dirty_log");
		slots[v].flags |= KVM_MEM_LOG_DIRTY_PAGES;
		slots[v].log_dirty = 1;
		vm_mem_region_set_flags(vm, 1 + v, slots[v].flags);
	} else if (!strcmp(op, "harvest")) {
		TEST_ASSERT(sscanf(rest, "%d", &v) == 1, "bad harvest");
		harvest(v, "harvest");
	} else {
		TEST_ASSERT(sscanf(rest, "%d %llu %llu", &v, &x, &z) == 3, "bad %s", op);
		if (!strcmp(op, "punch_hole"))
			punch(&slots[v], x, z);
		else if (!strcmp(op, "zap"))
			zap(&slots[v], x, z);
		else if (!strcmp(op, "uffd_wp"))
			uffd_wp(&slots[v], x, z);
		else
			TEST_FAIL("unknown op %s", op);
	}
	drain_trace();
	alarm(0);
	OUT("stepdone %d\n", n);
}

static void create_vm(char *line)
{
	int initially_set;

	TEST_ASSERT(sscanf(line, "vm %d %lu %lu %d %d", &nvcpus, &tcr_ha, &tcr_hd, &mmio_store,
			   &initially_set) == 5 && nvcpus >= 1 && nvcpus <= MAX_VCPUS,
		    "bad vm line: %s", line);
	/* P40V48_4K: the selftests library's mode that QEMU runs well (REAL_KVM notes) */
	vm = __vm_create(VM_SHAPE(VM_MODE_P40V48_4K), nvcpus, 1024);
	if (initially_set) {
		vm_enable_cap(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
			      KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET);
		manual_protect = 1;
	}
	vm_init_descriptor_tables(vm);
	vm_install_sync_handler(vm, VECTOR_SYNC_CURRENT, ESR_EC_DABT, guest_sync_exception);
	vm_install_sync_handler(vm, VECTOR_SYNC_CURRENT, ESR_EC_IABT, guest_sync_exception);
	vm_install_sync_handler(vm, VECTOR_SYNC_CURRENT, ESR_EC_UNKNOWN, guest_sync_exception);
	for (int v = 0; v < nvcpus; v++) {
		vcpus[v] = vm_vcpu_add(vm, v, guest_code);
		vcpu_args_set(vcpus[v], 1, (uint64_t)v);
		vcpu_init_descriptor_tables(vcpus[v]);
	}
}

/* The scenario's tables hang off TTBR1_EL1 (same indices as its TTBR0 VAs: the walk uses
 * VA bits below va_bits only); TCR_EL1's TTBR1 half mirrors the library's TTBR0 half. */
static void set_ttbr1(char *line)
{
	unsigned long long root, t1sz, tg1;

	TEST_ASSERT(sscanf(line, "ttbr1 %llx %llu %llu", &root, &t1sz, &tg1) == 3,
		    "bad ttbr1 line: %s", line);
	for (int v = 0; v < nvcpus; v++) {
		uint64_t tcr;

		vcpu_get_reg(vcpus[v], KVM_ARM64_SYS_REG(SYS_TCR_EL1), &tcr);
		tcr &= ~((0x3ful << 16) | (1ul << 23) | (0xfful << 24) | TCR_HA_BIT | TCR_HD_BIT);
		tcr |= (t1sz << 16) | (1ul << 24) | (1ul << 26) | (3ul << 28) | (tg1 << 30);
		tcr |= (tcr_ha ? TCR_HA_BIT : 0) | (tcr_hd ? TCR_HD_BIT : 0);
		vcpu_set_reg(vcpus[v], KVM_ARM64_SYS_REG(SYS_TCR_EL1), tcr);
		vcpu_set_reg(vcpus[v], KVM_ARM64_SYS_REG(SYS_TTBR1_EL1), root);
	}
}

/* clear_af stores through the guest kernel's own mapping of the table page: an identity
 * TTBR0 mapping whose tables live in memslot 0 (never walked in the scenario's slots). */
static void map_identity(char *line)
{
	unsigned long long ipa, pages;

	TEST_ASSERT(sscanf(line, "window %llx %llu", &ipa, &pages) == 2, "bad window: %s", line);
	virt_map(vm, ipa, ipa, pages);
}

static void go(void)
{
	finish_slots();
	write_file(TRACE "buffer_size_kb", "4096");
	write_file(TRACE "events/kvm/kvm_guest_fault/enable", "1");
	alarm(STEP_TIMEOUT_S);
	start_vcpus();
	alarm(0);
	write_file(TRACE "trace", "");		/* the library's own first faults */
	OUT("ready\n");
}

static void finish(void)
{
	cur_step = -1;
	for (int i = 0; i < nslots; i++)
		if (slots[i].log_dirty)
			harvest(i, "final");
	OUT("end\n");
}

int main(int argc, char *argv[])
{
	FILE *in = argc > 1 ? fopen(argv[1], "r") : stdin;
	char line[512];

	TEST_ASSERT(in, "cannot open %s", argv[1]);
	setbuf(stdout, NULL);
	signal(SIGALRM, on_timeout);
	while (fgets(line, sizeof(line), in)) {
		line[strcspn(line, "\n")] = 0;
		if (getenv("PTW_DEBUG"))
			fprintf(stderr, "> %s\n", line);
		if (!strncmp(line, "vm ", 3))
			create_vm(line);
		else if (!strncmp(line, "slot ", 5))
			add_slot(line);
		else if (!strncmp(line, "ttbr1 ", 6))
			set_ttbr1(line);
		else if (!strncmp(line, "window ", 7))
			map_identity(line);
		else if (!strncmp(line, "desc ", 5))
			write_desc(line);
		else if (!strncmp(line, "exec ", 5))
			write_exec(line);
		else if (!strcmp(line, "go"))
			go();
		else if (!strncmp(line, "step ", 5))
			do_step(line);
		else if (!strcmp(line, "end"))
			finish();
		else if (line[0] && line[0] != '#')
			TEST_FAIL("bad line: %s", line);
	}
	return 0;
}
