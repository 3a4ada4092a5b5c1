// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * procmon: exec and exit of processes in student containers, CO-RE, no kprobes.
 *
 *   tp_btf/sched_process_exec  -> one pm_exec record per successful execve() in a container
 *                                 whose UTS nodename starts with config.prefix
 *   tp_btf/sched_process_exit  -> one pm_exit record when the last thread of a tracked
 *                                 thread group exits (group_dead)
 *   tp_btf/sys_enter           -> pm_stderr records: what compilers (and their children:
 *                                 cc1, as, collect2, ld ...) write to fd 2, bounded per build.
 *                                 Raw sys_enter, not syscalls/sys_enter_write: it needs no
 *                                 tracefs mount; it returns after one compare for every
 *                                 syscall other than write(2). Attached only when
 *                                 userspace enables stderr capture.
 *
 * Record layout, config and counters: procmon_event.h.
 *
 * Older kernels (< 6.16) have no group_dead argument on sched_process_exit. The fallback
 * there is a second program attached to the same tracepoint that reads
 * task->signal->live (do_exit() decrements it before the tracepoint fires) and treats
 * live == 0 as group_dead; two threads racing to zero are de-duplicated by the
 * bpf_map_delete_elem() on `tracked` below, which succeeds for exactly one of them.
 * It is not built here because this kernel has group_dead and the two cannot share a
 * BTF prototype.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "procmon_event.h"

/* bpf_probe_read_{user,kernel}* are GPL-only helpers. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* include/linux/sched/signal.h: a #define, so not in BTF. Stable since 2.6. */
#define SIGNAL_GROUP_EXIT 0x00000004

/* write(2)'s number: the object is built per architecture (__TARGET_ARCH_*). */
#if defined(__TARGET_ARCH_x86)
#define PM_NR_WRITE 1
#else
#define PM_NR_WRITE 64 /* arm64, riscv and the other asm-generic tables */
#endif

/* Size set by userspace before load (bpf_map__set_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* tgids exec'd in a student container whose exit we still owe. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64); /* boot ns of the last exec */
} tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pm_counters);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pm_config);
} settings SEC(".maps");

/* exe basename -> enum pm_tool_class; filled by userspace before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[PM_TOOL_NAME_LEN]);
	__type(value, __u32);
} tools SEC(".maps");

/* tgids whose stderr is captured -> the build (compiler driver tgid) they belong to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} capture SEC(".maps");

/* build (driver tgid) -> stderr bytes already claimed, shared by the driver's children. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} builds SEC(".maps");

struct pm_stderr_scratch {
	struct pm_stderr rec;
	char data[PM_STDERR_CHUNK];
};

/* Where a pm_stderr record is assembled (a per-CPU value may be up to 32 KiB). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pm_stderr_scratch);
} stderr_scratch SEC(".maps");

struct pm_scratch {
	struct pm_exec rec;
	char data[PM_SCRATCH_DATA];
	char key[PM_TOOL_NAME_LEN]; /* tools lookup key, built here (not on the BPF stack) */
};

/*
 * Where an exec record is assembled before bpf_ringbuf_output() copies the used part:
 * bpf_ringbuf_reserve() only takes a constant size, and a per-CPU array cannot hold values
 * over 32 KiB, so this is a plain array indexed by CPU; userspace sets max_entries to the
 * number of possible CPUs. Tracepoint programs run with preemption disabled and are not
 * re-entered on one CPU, so an entry is never shared by two running programs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pm_scratch);
} scratch SEC(".maps");

static __always_inline struct pm_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

/* Batch wakeups: the reader also polls on a timer, so most records need not wake it. */
static __always_inline __u64 wakeup_flag(struct pm_counters *c, const struct pm_config *cfg,
					 __u32 size, bool urgent)
{
	__u64 n = c->exec_emitted + c->exit_emitted;
	__u32 every = cfg->wakeup_every;

	if (urgent || every <= 1 || size >= cfg->wakeup_bytes || n % every == 0 ||
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >
		    bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 4) {
		c->wakeups++;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/*
 * Compared in place through the BTF pointer (direct loads, no helper call: the filter is
 * paid by every exec on the node). Unrolled because a BTF pointer only takes constant
 * offsets.
 */
static __always_inline bool prefix_matches(struct uts_namespace *uts, const struct pm_config *cfg)
{
	__u32 n = cfg->prefix_len;
	bool ok = true;

#pragma unroll
	for (int i = 0; i < PM_PREFIX_MAX; i++) {
		if (i < n && uts->name.nodename[i] != cfg->prefix[i])
			ok = false;
	}
	return ok;
}

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u64 mnt_off;
	__u32 cpu;
	__u32 off;   /* next write offset in scratch data[] */
	__u32 start; /* offset where this path began */
	__u32 flags; /* set in *flags on exit: 0, trunc_flag or unreach_flag */
	__u32 trunc_flag;
	__u32 unreach_flag;
};

/*
 * One step of walk_path(): one component or one mount crossing. Run by bpf_loop() so the
 * verifier checks the body once instead of unrolling PM_MAX_DEPTH copies of its branches
 * (an open-coded loop here exceeds the 1M-instruction verification budget).
 */
static long walk_step(__u64 i, void *arg)
{
	struct walk_ctx *w = arg;
	/* locals, not w->x: BPF_CORE_READ(w->x, ...) would relocate the local walk_ctx too */
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	struct pm_scratch *s;

	if (dentry == w->root_dentry && vfsmnt == w->root_mnt)
		return 1; /* reached the container's "/" */

	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

	if (dentry == mnt_root || dentry == parent) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (up == mnt || dentry != mnt_root) {
			/* the namespace's top (or a pseudo fs): never met fs->root */
			w->flags = w->unreach_flag;
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->vfsmnt = (void *)up + w->mnt_off;
		return 0;
	}
	s = bpf_map_lookup_elem(&scratch, &w->cpu);
	if (!s || w->off - w->start >= PM_PATH_MAX) {
		w->flags = w->trunc_flag;
		return 1;
	}

	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	long n = bpf_probe_read_kernel_str(s->data + (w->off & PM_DATA_MASK), PM_NAME_MAX, name);

	if (n <= 0) {
		w->flags = w->trunc_flag;
		return 1;
	}
	w->off += n;
	w->dentry = parent;
	return 0;
}

/*
 * Append the components of `dentry`@`vfsmnt` to scratch data[] at `off`, leaf first, each
 * NUL-ended, walking up to the task's root (root_dentry@root_mnt) and across mount points.
 * Returns the new offset.
 */
static __always_inline __u32 walk_path(__u32 cpu, __u32 off, struct dentry *dentry,
				       struct vfsmount *vfsmnt, struct dentry *root_dentry,
				       struct vfsmount *root_mnt, __u32 *flags, __u32 trunc_flag,
				       __u32 unreach_flag)
{
	/* container_of(vfsmnt, struct mount, mnt), relocated by CO-RE */
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct walk_ctx w = {
		.dentry = dentry,
		.vfsmnt = vfsmnt,
		.mnt = (void *)vfsmnt - mnt_off,
		.root_dentry = root_dentry,
		.root_mnt = root_mnt,
		.mnt_off = mnt_off,
		.cpu = cpu,
		.off = off,
		.start = off,
		.trunc_flag = trunc_flag,
		.unreach_flag = unreach_flag,
	};

	if (!dentry || !vfsmnt) {
		*flags |= unreach_flag;
		return off;
	}
	/* returns the number of steps run; all PM_MAX_DEPTH without an end: too deep */
	if (bpf_loop(PM_MAX_DEPTH, walk_step, &w, 0) >= PM_MAX_DEPTH && !w.flags)
		w.flags = trunc_flag;
	*flags |= w.flags;
	return w.off;
}

/* The pid of `task`'s thread group in the task's own pid namespace, and that namespace. */
static __always_inline void ns_pid(struct task_struct *task, __u32 *nr, __u32 *ino)
{
	struct pid *pid = BPF_CORE_READ(task, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid up = {};
	/* numbers[] is a flexible array: CO-RE cannot relocate a variable index, so compute it */
	void *slot = (void *)pid + bpf_core_field_offset(struct pid, numbers) +
		     (__u64)(level & 0x3f) * bpf_core_type_size(struct upid);

	bpf_probe_read_kernel(&up, sizeof(up), slot);
	*nr = up.nr;
	*ino = BPF_CORE_READ(up.ns, ns.inum);
}

struct name_ctx {
	__u32 cpu;
	__u32 off;    /* the name's offset in scratch data[] */
	__u32 n;      /* its length (PM_TOOL_NAME_LEN + 1: no NUL within the key) */
	__u32 vstart; /* where the trailing run of [0-9.] starts (n: no such run) */
	int d1, d2;   /* positions of the last and second-last '-' (-1: none) */
	__u32 start;  /* copy: first char kept */
	__u32 end;    /* copy: one past the last char kept */
};

/* Pass 1, one char per step: copy into key[] (zero-padded), note the length, dashes and
 * the trailing version run. */
static long name_scan(__u64 i, void *arg)
{
	struct name_ctx *w = arg;
	struct pm_scratch *s = bpf_map_lookup_elem(&scratch, &w->cpu);

	if (!s)
		return 1;
	char ch = 0;

	/* past the NUL: zero-fill, the whole key is hashed (and the area is reused) */
	if (i < w->n)
		ch = s->data[(w->off + i) & PM_DATA_MASK];
	s->key[i & (PM_TOOL_NAME_LEN - 1)] = ch;
	if (ch == 0) {
		if (i < w->n)
			w->n = i;
		return 0;
	}
	if ((ch >= '0' && ch <= '9') || ch == '.') {
		if (w->vstart > i)
			w->vstart = i;
	} else {
		w->vstart = PM_TOOL_NAME_LEN + 1;
		if (ch == '-') {
			w->d2 = w->d1;
			w->d1 = i;
		}
	}
	return 0;
}

/* Pass 2: key[i] = key[start + i] for the kept part, NUL after it. */
static long name_shift(__u64 i, void *arg)
{
	struct name_ctx *w = arg;
	struct pm_scratch *s = bpf_map_lookup_elem(&scratch, &w->cpu);
	__u32 j = w->start + i;

	if (!s)
		return 1;
	s->key[i & (PM_TOOL_NAME_LEN - 1)] =
		j < w->end ? s->key[j & (PM_TOOL_NAME_LEN - 1)] : 0;
	return 0;
}

/*
 * The class of the exe whose basename (NUL-ended; the leaf component comes first in the
 * exe payload) starts at data[off]: looked up as is, then with a version suffix and a
 * triplet prefix cut ("x86_64-linux-gnu-gcc-12" -> "gcc", "python3.11" -> "python",
 * "clang++-14" -> "clang++"). -1: not in the map. bpf_loop() keeps the verifier's work
 * small (unrolled, these loops exceed its budget).
 */
static __always_inline int tool_class(struct pm_scratch *s, __u32 cpu, __u32 off, __u32 len)
{
	struct name_ctx w = {
		.cpu = cpu,
		.off = off,
		.n = PM_TOOL_NAME_LEN + 1,
		.vstart = PM_TOOL_NAME_LEN + 1,
		.d1 = -1,
		.d2 = -1,
	};
	__u32 *cls;

	if (len < 2)
		return -1; /* no exe */
	bpf_loop(PM_TOOL_NAME_LEN, name_scan, &w, 0);
	if (w.n > PM_TOOL_NAME_LEN - 1 || w.n == 0)
		return -1; /* longer than any tool's name */
	cls = bpf_map_lookup_elem(&tools, s->key);
	if (cls)
		return *cls;
	w.end = w.vstart < w.n ? w.vstart : w.n;
	int dash = w.d1;

	if (w.end > 0 && w.end < w.n && w.d1 >= 0 && (__u32)w.d1 == w.end - 1) {
		w.end--; /* "-12": the dash belongs to the version */
		dash = w.d2;
	}
	w.start = dash >= 0 ? (__u32)dash + 1 : 0;
	if (w.start == 0 && w.end == w.n)
		return -1; /* nothing cut: already looked up */
	if (w.start >= w.end)
		return -1;
	bpf_loop(PM_TOOL_NAME_LEN, name_shift, &w, 0);
	cls = bpf_map_lookup_elem(&tools, s->key);
	return cls ? (int)*cls : -1;
}

/*
 * Decide whether this exec's stderr is captured: a child of a captured process belongs to
 * the same build; a compiler whose parent is not captured starts a build of its own.
 * Returns the build's tgid (0: not captured) and sets flags.
 */
static __always_inline __u32 mark_capture(const struct pm_config *cfg, struct pm_counters *c,
					  __u32 tgid, __u32 ppid, int cls, __u32 *flags)
{
	__u32 *parent = bpf_map_lookup_elem(&capture, &ppid);
	__u32 build = 0;

	if (parent)
		build = *parent;
	else if (cls == PM_TOOL_COMPILER)
		build = tgid;
	if (!build || !cfg->capture_stderr) {
		/* a captured process that exec'd something else is no longer captured */
		if (bpf_map_lookup_elem(&capture, &tgid))
			bpf_map_delete_elem(&capture, &tgid);
		return 0;
	}
	if (build == tgid) {
		__u64 zero = 0;

		if (bpf_map_update_elem(&builds, &build, &zero, BPF_ANY))
			goto full;
	}
	if (bpf_map_update_elem(&capture, &tgid, &build, BPF_ANY))
		goto full;
	*flags |= PM_F_CAPTURE;
	return build;
full:
	*flags |= PM_F_CAPTURE_FULL;
	c->capture_full++;
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();
	struct pm_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	struct pm_counters *c = get_counters();
	struct pm_scratch *s;
	struct pm_exec *e;

	if (!cfg || !c || !cfg->enabled)
		return 0;
	c->exec_seen++;

	/* The filter comes first so that other processes cost only this much. */
	struct uts_namespace *uts = task->nsproxy->uts_ns;

	if (!prefix_matches(uts, cfg)) {
		c->exec_filtered++;
		return 0;
	}

	s = bpf_map_lookup_elem(&scratch, &cpu);
	if (!s) {
		c->exec_drop_scratch++;
		return 0;
	}
	e = &s->rec;
	bpf_probe_read_kernel_str(e->nodename, sizeof(e->nodename), uts->name.nodename);

	__u64 now = bpf_ktime_get_boot_ns();
	__u32 flags = 0, off = 0;

	e->hdr.type = PM_EV_EXEC;
	e->hdr.version = PM_ABI_VERSION;
	e->hdr.ts_ns = now;
	e->tgid = BPF_CORE_READ(task, tgid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = BPF_CORE_READ(task, real_cred, uid.val);
	e->gid = BPF_CORE_READ(task, real_cred, gid.val);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->fork_ns = BPF_CORE_READ(task, start_boottime);
	ns_pid(task, &e->ns_tgid, &e->pidns_ino);
	e->mntns_ino = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	e->_pad0 = 0;
	e->_pad1 = 0;

	/* argv: the new image's argument area, already copied in by execve() */
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__u64 arg_start = BPF_CORE_READ(mm, arg_start);
	__u64 arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 orig = arg_end > arg_start ? arg_end - arg_start : 0;
	__u32 len = orig > PM_ARGV_MAX ? PM_ARGV_MAX : (__u32)orig;

	if (orig > PM_ARGV_MAX)
		flags |= PM_F_ARGV_TRUNC;
	/* identity on len <= PM_ARGV_MAX; tells the verifier the read fits in data[] */
	len &= PM_DATA_MASK;
	if (len && bpf_probe_read_user(s->data, len, (void *)arg_start)) {
		flags |= PM_F_ARGV_ERR;
		c->exec_read_err++;
		len = 0;
	}
	e->argv_len = len;
	e->argv_orig_len = orig > 0xffffffffULL ? 0xffffffffU : (__u32)orig;
	off = len;

	/* filename as given to execve() */
	const char *fname = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str(s->data + (off & PM_DATA_MASK), PM_PATH_MAX, fname);

	if (n <= 0) {
		flags |= PM_F_FILENAME_TRUNC;
		n = 0;
	} else if (n == PM_PATH_MAX) {
		flags |= PM_F_FILENAME_TRUNC;
	}
	e->filename_len = n;
	off += n;

	/* exe and cwd, relative to the task's root = the container's "/" */
	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	struct dentry *root_d = BPF_CORE_READ(fs, root.dentry);
	struct vfsmount *root_m = BPF_CORE_READ(fs, root.mnt);
	struct file *exe = BPF_CORE_READ(mm, exe_file);
	__u32 mark = off;

	off = walk_path(cpu, off, BPF_CORE_READ(exe, f_path.dentry),
			BPF_CORE_READ(exe, f_path.mnt), root_d, root_m, &flags, PM_F_EXE_TRUNC,
			PM_F_EXE_UNREACH);
	e->exe_len = off - mark;
	/* the exe's leaf component comes first: its length is up to the first NUL */
	int cls = tool_class(s, cpu, mark, off - mark);
	if (cls == PM_TOOL_COMPILER || cls == PM_TOOL_INTERPRETER)
		flags |= PM_F_TOOL;
	mark = off;
	off = walk_path(cpu, off, BPF_CORE_READ(fs, pwd.dentry), BPF_CORE_READ(fs, pwd.mnt),
			root_d, root_m, &flags, PM_F_CWD_TRUNC, PM_F_CWD_UNREACH);
	e->cwd_len = off - mark;

	/* Track before output so a fast exit cannot be missed; BPF_ANY re-arms a re-exec. */
	__u32 tgid = e->tgid;

	if (bpf_map_update_elem(&tracked, &tgid, &now, BPF_ANY)) {
		flags |= PM_F_NOT_TRACKED;
		c->exec_not_tracked++;
	}
	e->build_tgid = mark_capture(cfg, c, tgid, e->ppid, cls, &flags);
	e->flags = flags;

	off &= PM_DATA_MASK;
	__u32 size = sizeof(struct pm_exec) + off;
	/* the reader must see a compiler or interpreter exec before the process is gone */
	bool urgent = flags & (PM_F_TOOL | PM_F_CAPTURE);

	e->hdr.size = size;
	if (bpf_ringbuf_output(&events, s, size, wakeup_flag(c, cfg, size, urgent))) {
		c->exec_drop_ringbuf++;
		/* no exec record: do not emit an orphan exit for it either */
		bpf_map_delete_elem(&tracked, &tgid);
		if (e->build_tgid) {
			bpf_map_delete_elem(&capture, &tgid);
			if (e->build_tgid == tgid)
				bpf_map_delete_elem(&builds, &tgid);
		}
		return 0;
	}
	c->exec_emitted++;
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *task, bool group_dead)
{
	__u32 zero = 0;
	struct pm_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	struct pm_counters *c = get_counters();

	/* Only the end of the whole thread group is a process exit. */
	if (!group_dead || !cfg || !c || !cfg->enabled)
		return 0;
	c->exit_seen++;

	__u32 tgid = task->tgid;

	/*
	 * Look up before deleting: a miss is the common case and a hash delete takes the
	 * bucket lock (~1 us here). The delete succeeds for exactly one caller, so there is
	 * at most one exit per exec'd tgid even if two exits raced.
	 */
	if (!bpf_map_lookup_elem(&tracked, &tgid) || bpf_map_delete_elem(&tracked, &tgid)) {
		c->exit_filtered++;
		return 0;
	}

	/* only tracked tgids can be captured: the rest of the node pays nothing for this */
	if (bpf_map_lookup_elem(&capture, &tgid)) {
		bpf_map_delete_elem(&capture, &tgid);
		if (bpf_map_lookup_elem(&builds, &tgid))
			bpf_map_delete_elem(&builds, &tgid);
	}

	struct pm_exit *x = bpf_ringbuf_reserve(&events, sizeof(*x), 0);

	if (!x) {
		c->exit_drop_ringbuf++;
		return 0;
	}
	/*
	 * The status waitpid() will report (wait_task_zombie): the group exit code when
	 * SIGNAL_GROUP_EXIT is set -- by exit_group(), a fatal signal (with the 0x80 core flag
	 * added by the coredump) or, since 5.19, by synchronize_group_exit() when the last
	 * thread leaves with plain SYS_exit -- else the leader's own exit code (older kernels,
	 * where a leader that left first with SYS_exit decides the status).
	 */
	struct signal_struct *sig = BPF_CORE_READ(task, signal);
	__u32 status;

	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT)
		status = BPF_CORE_READ(sig, group_exit_code);
	else
		status = BPF_CORE_READ(task, group_leader, exit_code);

	x->hdr.type = PM_EV_EXIT;
	x->hdr.version = PM_ABI_VERSION;
	x->hdr.size = sizeof(*x);
	x->hdr.ts_ns = bpf_ktime_get_boot_ns();
	x->tgid = tgid;
	x->status = status;
	x->last_tid = BPF_CORE_READ(task, pid);
	x->flags = 0;
	c->exit_emitted++;
	bpf_ringbuf_submit(x, wakeup_flag(c, cfg, sizeof(*x), false));
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(handle_sys_enter, struct pt_regs *regs, long id)
{
	if (id != PM_NR_WRITE)
		return 0;

	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *build = bpf_map_lookup_elem(&capture, &tgid);

	if (!build)
		return 0;
	if (PT_REGS_PARM1_CORE_SYSCALL(regs) != 2)
		return 0; /* only fd 2: a compiler's stdout may be its output (-E, -S -o -) */

	__u32 zero = 0;
	struct pm_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	struct pm_counters *c = get_counters();
	struct pm_stderr_scratch *s = bpf_map_lookup_elem(&stderr_scratch, &zero);

	if (!cfg || !c || !s || !cfg->enabled || !cfg->capture_stderr)
		return 0;
	c->stderr_seen++;

	__u32 b = *build;
	__u64 *used = bpf_map_lookup_elem(&builds, &b);
	__u64 count = PT_REGS_PARM3_CORE_SYSCALL(regs);
	__u64 want = count < PM_STDERR_CHUNK ? count : PM_STDERR_CHUNK;

	if (!used || want == 0) {
		c->stderr_drop_budget++;
		return 0;
	}
	/* claim bytes atomically: the driver's children may write at the same time */
	__u64 old = __sync_fetch_and_add(used, want);

	if (old >= cfg->stderr_budget) {
		c->stderr_drop_budget++;
		return 0;
	}
	__u64 left = cfg->stderr_budget - old;
	__u32 n = want < left ? want : left;

	if (n > PM_STDERR_CHUNK)
		n = PM_STDERR_CHUNK; /* already true; tells the verifier */
	if (n == 0 || bpf_probe_read_user(s->data, n, (void *)PT_REGS_PARM2_CORE_SYSCALL(regs))) {
		c->stderr_read_err++;
		return 0;
	}
	s->rec.hdr.type = PM_EV_STDERR;
	s->rec.hdr.version = PM_ABI_VERSION;
	s->rec.hdr.ts_ns = bpf_ktime_get_boot_ns();
	s->rec.tgid = tgid;
	s->rec.build_tgid = b;
	s->rec.len = n;
	s->rec.orig_len = count > 0xffffffffULL ? 0xffffffffU : (__u32)count;

	__u32 size = sizeof(s->rec) + n;

	s->rec.hdr.size = size;
	if (bpf_ringbuf_output(&events, s, size, wakeup_flag(c, cfg, size, false))) {
		c->stderr_drop_ringbuf++;
		return 0;
	}
	c->stderr_emitted++;
	return 0;
}
