/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What every procmon BPF object shares, defined once: procmon.bpf.c, and bench j's floor
 * probe (bench/procmon/floor.bpf.c), which must filter, count, track and report exit
 * status exactly as the agent does. BPF side only: include after vmlinux.h, bpf_helpers.h
 * and procmon_event.h, in one compilation unit per object (it defines maps).
 */
#ifndef PROCMON_CORE_BPF_H
#define PROCMON_CORE_BPF_H

/* include/linux/sched/signal.h: a #define, so not in BTF. Stable since 2.6. */
#define SIGNAL_GROUP_EXIT 0x00000004

/*
 * Written by userspace into the object before load (its own section, so that the map
 * holds nothing else and userspace can set it whole); read-only for the programs.
 */
const volatile struct pm_config cfg SEC(".rodata.cfg") = {};

/* Size set by userspace before load (bpf_map__set_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* PID_MAX_LIMIT on 64-bit (pid_max cannot be raised above it): no tgid is larger. */
#define PM_PID_LIMIT (4U << 20)
#define PM_PID_WORDS (PM_PID_LIMIT / 32)

/*
 * Two bits per tgid, 32 tgids per word: PM_TRACKED (an exec record was emitted in a
 * student container: an exit is owed) and PM_CAPTURED (its stderr is captured: `capture`
 * holds its build). One word, so an exec or exit touches one cache line for both.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PM_PID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} pidbits SEC(".maps");

#define PM_TRACKED(tgid) (1ULL << (((tgid) % 32) * 2))
#define PM_CAPTURED(tgid) (2ULL << (((tgid) % 32) * 2))

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pm_counters);
} stats SEC(".maps");

static __always_inline struct pm_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

/*
 * Compared in place through the BTF pointer (direct loads, no helper call: the filter is
 * paid by every exec on the node). prefix_len and prefix[] are .rodata constants: the
 * verifier drops the compares past prefix_len.
 */
static __always_inline bool prefix_matches(struct uts_namespace *uts)
{
	__u32 n = cfg.prefix_len;
	bool ok = true;

#pragma unroll
	for (int i = 0; i < PM_PREFIX_MAX; i++) {
		if (i < n && uts->name.nodename[i] != cfg.prefix[i])
			ok = false;
	}
	return ok;
}

/* The word of `pidbits` that holds `tgid`'s bits (an inlined array lookup). */
static __always_inline __u64 *pid_word(__u32 tgid)
{
	__u32 k = tgid / 32;

	return bpf_map_lookup_elem(&pidbits, &k);
}

/*
 * The status waitpid() will report for the thread group `task` ends (wait_task_zombie):
 * the group exit code when SIGNAL_GROUP_EXIT is set -- by exit_group(), a fatal signal
 * (with the 0x80 core flag added by the coredump) or, since 5.19, by
 * synchronize_group_exit() when the last thread leaves with plain SYS_exit -- else the
 * leader's own exit code (older kernels, where a leader that left first with SYS_exit
 * decides the status).
 */
static __always_inline __u32 wait_status(struct task_struct *task)
{
	struct signal_struct *sig = task->signal;

	if (sig->flags & SIGNAL_GROUP_EXIT)
		return sig->group_exit_code;
	return task->group_leader->exit_code;
}

#endif /* PROCMON_CORE_BPF_H */
