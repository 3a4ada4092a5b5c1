// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The floor probe of bench j (never loaded by the agent): the least a design with one
 * ring buffer record per student exec and one per its exit can cost on these hooks.
 * What procmon.bpf.c keeps and this does too: the same two hooks, the same UTS nodename
 * prefix filter (a .rodata prefix), the per-CPU counters, the tracked bit per tgid (set
 * by the exec, claimed by the exit with an atomic AND: the exit must know it is owed) and
 * the batched wakeup (wakeup_every, counted as there). What it leaves out: argv, filename,
 * exe and cwd walks, nodename copy, namespace ids, tool lookup, stderr capture, scratch.
 * The exec record is sizeof(struct pm_exec) with only tgid, ppid and the time written;
 * the exit record is a pm_exit with tgid and the wait status.
 *
 * Built by the bench at run time with the Makefile's clang flags, vmlinux.h and includes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "procmon_event.h"
#include "procmon_core.bpf.h" /* cfg, maps, filter, tracked bit, wait status */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline __u64 wakeup_flag(struct pm_counters *c)
{
	if ((c->exec_emitted + c->exit_emitted) % cfg.wakeup_every == 0) {
		c->wakeups++;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(floor_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct pm_counters *c = get_counters();

	if (!c)
		return 0;
	c->exec_seen++;
	if (!prefix_matches(task->nsproxy->uts_ns)) {
		c->exec_filtered++;
		return 0;
	}

	__u32 tgid = task->tgid;
	__u64 *pw = pid_word(tgid);
	struct pm_exec *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		c->exec_drop_ringbuf++;
		return 0;
	}
	e->hdr.type = PM_EV_EXEC;
	e->hdr.version = PM_ABI_VERSION;
	e->hdr.size = sizeof(*e);
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->tgid = tgid;
	e->ppid = task->real_parent->tgid;
	/* counted after the flag, before for the exit: as procmon.bpf.c does (the same
	 * wakeups per record, each an irq_work self-IPI) */
	bpf_ringbuf_submit(e, wakeup_flag(c));
	c->exec_emitted++;
	if (pw)
		__sync_fetch_and_or(pw, PM_TRACKED(tgid));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(floor_exit, struct task_struct *task, bool group_dead)
{
	struct pm_counters *c = get_counters();

	if (!group_dead || !c)
		return 0;
	c->exit_seen++;

	__u32 tgid = task->tgid;
	__u64 *pw = pid_word(tgid);

	if (!pw || !(*pw & PM_TRACKED(tgid)) ||
	    !(__sync_fetch_and_and(pw, ~PM_TRACKED(tgid)) & PM_TRACKED(tgid))) {
		c->exit_filtered++;
		return 0;
	}

	struct pm_exit *x = bpf_ringbuf_reserve(&events, sizeof(*x), 0);

	if (!x) {
		c->exit_drop_ringbuf++;
		return 0;
	}
	x->hdr.type = PM_EV_EXIT;
	x->hdr.version = PM_ABI_VERSION;
	x->hdr.size = sizeof(*x);
	x->hdr.ts_ns = bpf_ktime_get_boot_ns();
	x->tgid = tgid;
	x->status = wait_status(task);
	c->exit_emitted++;
	bpf_ringbuf_submit(x, wakeup_flag(c));
	return 0;
}
