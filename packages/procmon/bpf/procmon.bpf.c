// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * procmon: exec and exit of processes in student containers, CO-RE, no kprobes.
 *
 *   tp_btf/sched_process_exec  -> one pm_exec record per successful execve() in a container
 *                                 whose UTS nodename starts with config.prefix
 *   tp_btf/sched_process_exit  -> one pm_exit record when the last thread of a tracked
 *                                 thread group exits (group_dead)
 *   A compiler's passes (cc1, as, collect2, ld: children of a captured process) are
 *   folded: captured for their stderr, but neither exec nor exit record (counted as
 *   exec_folded / exit_folded); userspace sends no run for them.
 *   tp/syscalls/sys_enter_write -> pm_stderr records: what compilers (and their children:
 *   (or tp_btf/sys_enter)          cc1, as, collect2, ld ...) write to fd 2, bounded per
 *                                  build. Loaded and attached only when userspace enables
 *                                  stderr capture; userspace picks one of the two.
 *                                  fentry/fexit/lsm (trampolines) are refused (EPERM) and
 *                                  kprobes absent on the target nodes, so the write-only
 *                                  hook is the syscall trace event (its id is in tracefs);
 *                                  raw sys_enter, run on every syscall, is the fallback.
 *
 * Cost (every exec and exit on the node runs these; bench j measures them):
 *   - kernel memory is read with direct BTF loads (tp_btf arguments are trusted pointers,
 *     bpf_rdonly_cast() for the rest), not bpf_probe_read_kernel() per field: a helper call
 *     costs ~100 ns on the nodes (retpolines, return thunks), a load a few;
 *   - the config is .rodata, frozen before load: the verifier knows every field, drops
 *     the compares past prefix_len and the branches of disabled features;
 *   - a bloom of the tool names in the config spares most execs the tools hash lookup;
 *     while no build runs, no capture state is looked at; the reader is woken only every
 *     256th record per CPU (it also polls every poll_ms);
 *   - "is this tgid tracked / captured" are two bits per possible pid, in one word: set by
 *     an exec (an atomic OR), claimed by the exit (an atomic AND that returns the old
 *     word), so neither takes a lock nor allocates (a hash update or a task-local-storage
 *     creation per exec cost 1.5-3 us here); only compilers and their children touch the
 *     capture hash map;
 *   - path components short enough to live inside the dentry are copied with five word
 *     loads; only longer ones need bpf_probe_read_kernel_str().
 *   - the config's scalars and the hot counters each share one cache line; the nodename
 *     copy stops at its NUL.
 * Measured and NOT kept (bench j's setup, this VM): reserving the exec record with
 * bpf_ringbuf_reserve_dynptr() after the path walks and writing header and argv in place
 * (bpf_dynptr_data, bpf_probe_read_user_dynptr, bpf_dynptr_write) cost ~0.9 us more than
 * the scratch + one bpf_ringbuf_output(): the ring's lines are as cold either way, the
 * helper calls are extra. The ring buffer itself (reserve + commit) is ~1 us of a student
 * exec and ~0.5 us of its exit; an empty program on these hooks reads ~0.48 / ~0.21 us.
 *
 * Record layout, config and counters: procmon_event.h.
 *
 * Older kernels (< 6.16) have no group_dead argument on sched_process_exit. The fallback
 * there is a second program attached to the same tracepoint that reads
 * task->signal->live (do_exit() decrements it before the tracepoint fires) and treats
 * live == 0 as group_dead; two threads racing to zero are de-duplicated by the atomic
 * AND on the tracked bit below, which returns it set to exactly one of them. It is not
 * built here because this kernel has group_dead and the two cannot share a BTF prototype.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "procmon_event.h"
#include "procmon_core.bpf.h"

/* bpf_probe_read_{user,kernel}* are GPL-only helpers. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* write(2)'s number: the object is built per architecture (__TARGET_ARCH_*). */
#if defined(__TARGET_ARCH_x86)
#define PM_NR_WRITE 1
#else
#define PM_NR_WRITE 64 /* arm64, riscv and the other asm-generic tables */
#endif

/* A typed, read-only (fault-safe) view of a kernel address; inlined by the verifier. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define AS(type, addr) ((struct type *)bpf_rdonly_cast((void *)(addr), \
						       bpf_core_type_id_kernel(struct type)))

/* Processes with PM_CAPTURED set: while 0 (no build running), nobody's capture state is
 * looked at, not even the one bit. Read-mostly, so it stays cached. */
__u64 n_captured = 0;

/* captured tgids -> the build (compiler driver tgid) they belong to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} capture SEC(".maps");

/* exe basename -> enum pm_tool_class; filled by userspace before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[PM_TOOL_NAME_LEN]);
	__type(value, __u32);
} tools SEC(".maps");

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
 * Where an exec record is assembled before bpf_ringbuf_output() copies the used part
 * (only the bytes present: header + the payload actually read):
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

/*
 * Batch wakeups (a wakeup is an irq_work, a self-IPI: microseconds in a VM): the reader
 * also polls on a timer (poll_ms), so most records need not wake it. Every
 * wakeup_every-th record per CPU still does, and every 64th checks the fill level (two
 * helper calls) so that a burst of large records wakes the reader at a quarter full.
 */
static __always_inline __u64 wakeup_flag(struct pm_counters *c, __u32 size, bool urgent)
{
	__u64 n = c->exec_emitted + c->exit_emitted + c->stderr_emitted;
	__u32 every = cfg.wakeup_every;

	if (urgent || every <= 1 || size >= cfg.wakeup_bytes || n % every == 0 ||
	    (n % 64 == 0 && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >
				    bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 4)) {
		c->wakeups++;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/* The build `tgid`'s stderr belongs to; 0: not captured (one load for everyone else). */
static __always_inline __u32 capture_of(__u32 tgid)
{
	__u64 *w;
	__u32 *b;

	if (!n_captured)
		return 0;
	w = pid_word(tgid);
	if (!w || !(*w & PM_CAPTURED(tgid)))
		return 0;
	b = bpf_map_lookup_elem(&capture, &tgid);
	return b ? *b : 0;
}

/* Drop `tgid`'s capture entry (and its build, if it is a driver); the caller clears the
 * bit. */
static __always_inline void uncapture(__u32 tgid)
{
	bpf_map_delete_elem(&capture, &tgid);
	if (bpf_map_lookup_elem(&builds, &tgid))
		bpf_map_delete_elem(&builds, &tgid);
}

/*
 * Kernels since 6.14 keep short dentry names in union shortname_store (40 bytes, also
 * viewable as 5 words). Declared here as CO-RE flavors (libbpf matches "x___new" to the
 * kernel's "x"), so the object also builds against an older vmlinux.h (the image builds
 * against Debian's 6.1 BTF); bpf_core_*_exists() picks the path at load time.
 */
union shortname_store___new {
	unsigned char string[40];
	unsigned long words[5];
} __attribute__((preserve_access_index));

struct dentry___new {
	union shortname_store___new d_shortname;
} __attribute__((preserve_access_index));

/* Some byte of `v` is 0. */
static __always_inline bool has_zero(__u64 v)
{
	return ((v - 0x0101010101010101ULL) & ~v & 0x8080808080808080ULL) != 0;
}

/*
 * The 64 chars of a nodename (the 65th is its NUL), zero-padded to PM_NODENAME_LEN. A BTF
 * pointer into a char array only takes byte loads; viewed as the kernel's
 * union shortname_store (a u64 array), it takes word loads instead of byte loads, and
 * none past the word with the NUL (sethostname() zero-fills the rest): a student
 * hostname of ~30 chars leaves the last cache line of the 64 unread.
 */
static __always_inline void copy_nodename(char *dst, const char *src)
{
	if (bpf_core_type_exists(union shortname_store___new)) {
		__u32 id = bpf_core_type_id_kernel(union shortname_store___new);
		union shortname_store___new *a = bpf_rdonly_cast(src, id);
		union shortname_store___new *b = bpf_rdonly_cast(src + 40, id);
		bool end = false;

#pragma unroll
		for (int i = 0; i < 5; i++) {
			__u64 v = 0;

			if (!end) {
				v = a->words[i];
				end = has_zero(v);
			}
			((__u64 *)dst)[i] = v;
		}
#pragma unroll
		for (int i = 0; i < 3; i++) {
			__u64 v = 0;

			if (!end) {
				v = b->words[i];
				end = has_zero(v);
			}
			((__u64 *)dst)[5 + i] = v;
		}
	} else {
#pragma unroll
		for (int i = 0; i < 64; i++)
			dst[i] = src[i];
	}
#pragma unroll
	for (int i = 64; i < PM_NODENAME_LEN; i++)
		dst[i] = 0;
}

/*
 * The string at `src` (kernel memory) into dst, if its NUL is within its first 40 bytes
 * (most exec filenames): five word loads instead of bpf_probe_read_kernel_str() (a helper
 * call that then copies byte by byte; ~250 ns of a student exec here). Returns its length
 * with the NUL; 0: longer, unaligned or no word view on this kernel (the caller reads it
 * with the helper). Aligned only: a faulting load reads as 0 (a false NUL), and an aligned
 * word that holds a byte of the string never reaches a page the string does not. Bytes
 * after the NUL are copied too; what follows in dst overwrites them or is not emitted.
 */
static __always_inline long copy_short_str(char *dst, const char *src)
{
	long n = 0;

	if (!bpf_core_type_exists(union shortname_store___new) || ((__u64)src & 7))
		return 0;

	union shortname_store___new *a =
		bpf_rdonly_cast(src, bpf_core_type_id_kernel(union shortname_store___new));

#pragma unroll
	for (int k = 0; k < 5; k++) {
		__u64 v = a->words[k];
		/* the lowest set bit marks the first zero byte exactly (little-endian) */
		__u64 m = (v - 0x0101010101010101ULL) & ~v & 0x8080808080808080ULL;

		((__u64 *)dst)[k] = v;
		/* (m & -m) >> 7 is 256^j for the zero byte j; the multiply puts j in the top byte */
		if (!n && m)
			n = k * 8 + ((((m & -m) >> 7) * 0x0001020304050607ULL) >> 56) + 1;
	}
	return n;
}

struct walk_ctx {
	__u64 dentry; /* addresses, re-typed with AS() in each step */
	__u64 mnt;    /* struct mount of the current vfsmount */
	__u64 root_dentry;
	__u64 root_mnt; /* struct vfsmount */
	__u32 cpu;
	__u32 off;   /* next write offset in scratch data[] */
	__u32 start; /* offset where this path began */
	__u32 first; /* length of the first (leaf) component, NUL included; 0: none */
	__u32 flags; /* set in *flags on exit: 0, trunc_flag or unreach_flag */
	__u32 trunc_flag;
	__u32 unreach_flag;
};

/*
 * One step of walk_path(): one component or one mount crossing. Run by bpf_loop() so the
 * verifier checks the body once instead of unrolling PM_MAX_DEPTH copies of its branches.
 * Only the name copy is a helper call; the pointer chasing is direct loads.
 */
static long walk_step(__u64 i, void *arg)
{
	struct walk_ctx *w = arg;
	struct dentry *dentry = AS(dentry, w->dentry);
	struct mount *mnt = AS(mount, w->mnt);
	struct pm_scratch *s;

	if (w->dentry == w->root_dentry && (__u64)&mnt->mnt == w->root_mnt)
		return 1; /* reached the container's "/" */

	struct dentry *mnt_root = mnt->mnt.mnt_root;
	struct dentry *parent = dentry->d_parent;

	if (dentry == mnt_root || dentry == parent) {
		struct mount *up = mnt->mnt_parent;

		if (up == mnt || dentry != mnt_root) {
			/* the namespace's top (or a pseudo fs): never met fs->root */
			w->flags = w->unreach_flag;
			return 1;
		}
		w->dentry = (__u64)mnt->mnt_mountpoint;
		w->mnt = (__u64)up;
		return 0;
	}
	s = bpf_map_lookup_elem(&scratch, &w->cpu);
	if (!s || w->off - w->start >= PM_PATH_MAX) {
		w->flags = w->trunc_flag;
		return 1;
	}

	const unsigned char *name = dentry->d_name.name;
	__u32 len = dentry->d_name.len;
	long n;

	struct dentry___new *dn = (void *)dentry;

	if (bpf_core_field_exists(dn->d_shortname) && len < sizeof(dn->d_shortname.words) &&
	    (void *)name == &dn->d_shortname) {
		/* the name lives in the dentry: five word loads instead of a helper call */
		char *dst = s->data + (w->off & PM_DATA_MASK);

#pragma unroll
		for (int k = 0; k < 5; k++)
			*(__u64 *)(dst + k * 8) = dn->d_shortname.words[k];
		s->data[(w->off + len) & PM_DATA_MASK] = 0; /* what follows may be stale bytes */
		n = len + 1;
	} else {
		n = bpf_probe_read_kernel_str(s->data + (w->off & PM_DATA_MASK), PM_NAME_MAX,
					      name);
	}

	if (n <= 0) {
		w->flags = w->trunc_flag;
		return 1;
	}
	if (w->off == w->start)
		w->first = n;
	w->off += n;
	w->dentry = (__u64)parent;
	return 0;
}

/*
 * Append the components of `dentry`@`vfsmnt` to scratch data[] at `off`, leaf first, each
 * NUL-ended, walking up to the task's root (root_dentry@root_mnt) and across mount points.
 * Returns the new offset; *first: the leaf component's length.
 */
static __always_inline __u32 walk_path(__u32 cpu, __u32 off, struct dentry *dentry,
				       struct vfsmount *vfsmnt, struct dentry *root_dentry,
				       struct vfsmount *root_mnt, __u32 *flags, __u32 trunc_flag,
				       __u32 unreach_flag, __u32 *first)
{
	/* container_of(vfsmnt, struct mount, mnt), relocated by CO-RE */
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct walk_ctx w = {
		.dentry = (__u64)dentry,
		.mnt = (__u64)vfsmnt - mnt_off,
		.root_dentry = (__u64)root_dentry,
		.root_mnt = (__u64)root_mnt,
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
	*first = w.first;
	return w.off;
}

/* pid->numbers[k] for a constant k: direct loads (a variable index is not allowed on a BTF
 * pointer); the flexible array is walked by the verifier like a fixed one. */
#define PM_UPID(pid, k, nr, ino)                               \
	do {                                                   \
		*(nr) = (pid)->numbers[k].nr;                  \
		*(ino) = (pid)->numbers[k].ns->ns.inum;         \
	} while (0)

/* The pid of `task`'s thread group in the task's own pid namespace, and that namespace. */
static __always_inline void ns_pid(struct task_struct *task, __u32 *nr, __u32 *ino)
{
	struct pid *pid = task->group_leader->thread_pid;
	unsigned int level = pid->level;

	/* containers nest one or two levels deep; deeper ones take the generic (helper) path */
	if (level == 0) {
		PM_UPID(pid, 0, nr, ino);
	} else if (level == 1) {
		PM_UPID(pid, 1, nr, ino);
	} else if (level == 2) {
		PM_UPID(pid, 2, nr, ino);
	} else {
		struct upid up = {};
		/* numbers[] is a flexible array: CO-RE cannot relocate a variable index */
		void *slot = (void *)pid + bpf_core_field_offset(struct pid, numbers) +
			     (__u64)(level & 0x3f) * bpf_core_type_size(struct upid);

		bpf_probe_read_kernel(&up, sizeof(up), slot);
		*nr = up.nr;
		*ino = up.ns ? AS(pid_namespace, up.ns)->ns.inum : 0;
	}
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

/* Some byte of `w` is `ch` (the classic has-zero-byte test on w ^ ch...ch). */
static __always_inline bool has_byte(__u64 w, __u8 ch)
{
	__u64 v = w ^ (0x0101010101010101ULL * ch);

	return ((v - 0x0101010101010101ULL) & ~v & 0x8080808080808080ULL) != 0;
}

/*
 * The class of the exe whose basename (`n` bytes with its NUL: the leaf component comes
 * first in the exe payload) starts at data[off]: looked up as is, then with a version
 * suffix and a triplet prefix cut ("x86_64-linux-gnu-gcc-12" -> "gcc", "python3.11" ->
 * "python", "clang++-14" -> "clang++"). -1: not in the map. The first key is built with
 * four word copies and looked up only if its bloom bit is set; only a name that can be cut (a '-', or a digit or '.' at the end) runs
 * the bpf_loop() scan, which keeps the verifier's work small (unrolled, it exceeds its
 * budget).
 */
static __always_inline int tool_class(struct pm_scratch *s, __u32 cpu, __u32 off, __u32 n)
{
	struct name_ctx w = {
		.cpu = cpu,
		.off = off,
		.n = PM_TOOL_NAME_LEN + 1,
		.vstart = PM_TOOL_NAME_LEN + 1,
		.d1 = -1,
		.d2 = -1,
	};
	__u64 key[PM_TOOL_NAME_LEN / 8]; /* on the stack: scratch key[] is a cold line */
	bool dash = false;
	__u32 *cls;

	if (n < 2 || n > PM_TOOL_NAME_LEN)
		return -1; /* no exe, or longer than any tool's name (NUL included) */
#pragma unroll
	for (int i = 0; i < PM_TOOL_NAME_LEN / 8; i++) {
		__u64 v = *(__u64 *)(s->data + ((off + i * 8) & PM_DATA_MASK));
		int keep = (int)n - 1 - i * 8; /* name bytes in this word */

		if (keep <= 0)
			v = 0;
		else if (keep < 8)
			v &= (1ULL << (keep * 8)) - 1; /* little-endian: low bytes first */
		key[i] = v;
		dash |= has_byte(v, '-');
	}
	char last = s->data[(off + n - 2) & PM_DATA_MASK];
	__u32 bit = PM_TOOL_BLOOM_BIT((__u8)key[0], (__u8)last, n - 1);

	/* a hash lookup is ~3 cold cache lines: most exes (student programs) skip it */
	if (!cfg.tool_bloom || (cfg.tool_bloom >> bit) & 1) {
		cls = bpf_map_lookup_elem(&tools, key);
		if (cls)
			return *cls;
	}

	if (!dash && !((last >= '0' && last <= '9') || last == '.'))
		return -1; /* nothing to cut: already looked up */
	bpf_loop(PM_TOOL_NAME_LEN, name_scan, &w, 0);
	if (w.n > PM_TOOL_NAME_LEN - 1 || w.n == 0)
		return -1;
	w.end = w.vstart < w.n ? w.vstart : w.n;
	int d = w.d1;

	if (w.end > 0 && w.end < w.n && w.d1 >= 0 && (__u32)w.d1 == w.end - 1) {
		w.end--; /* "-12": the dash belongs to the version */
		d = w.d2;
	}
	w.start = d >= 0 ? (__u32)d + 1 : 0;
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
 * the same build (`parent`: its build, 0: none); a compiler whose parent is not captured
 * starts a build of its own. Returns the build's tgid (0: not captured) and sets flags.
 * The capture entry is written here, its bit only once the exec record is out (the
 * process cannot write before).
 */
static __always_inline __u32 mark_capture(struct pm_counters *c, __u32 tgid, __u32 parent,
					  int cls, __u32 *flags)
{
	__u32 build = parent;

	if (!cfg.capture_stderr)
		return 0;
	if (!build && cls == PM_TOOL_COMPILER)
		build = tgid;
	if (!build)
		return 0;
	if (build == tgid) {
		__u64 zero = 0;

		if (bpf_map_update_elem(&builds, &build, &zero, BPF_ANY))
			goto full;
	}
	if (bpf_map_update_elem(&capture, &tgid, &build, BPF_ANY)) {
		if (build == tgid)
			bpf_map_delete_elem(&builds, &tgid);
		goto full;
	}
	*flags |= PM_F_CAPTURE;
	return build;
full:
	*flags |= PM_F_CAPTURE_FULL;
	c->capture_full++;
	return 0;
}

/*
 * A compiler's pass (cc1, as, collect2, ld: its parent is captured, `parent` is the build)
 * in a pid that owes no exit record: captured for its stderr, which names the build, but
 * no exec record now and no exit record at its end (PM_CAPTURED without PM_TRACKED):
 * userspace sends no run for it. Most processes of a build are such passes. A pid that
 * owes an exit (its earlier program was emitted) is emitted as before: that record ends
 * the earlier program. Returns true when folded.
 */
static __always_inline bool fold_child(struct pm_counters *c, __u32 tgid, __u32 parent,
				       __u64 *pw)
{
	/* only this tgid's exec and exit change its two bits, and not concurrently */
	__u64 w = *pw;

	if (w & PM_TRACKED(tgid))
		return false;
	if (bpf_map_update_elem(&capture, &tgid, &parent, BPF_ANY))
		return false; /* the full path flags PM_F_CAPTURE_FULL */
	if (!(w & PM_CAPTURED(tgid))) { /* else: a folded pass exec'd another (sh -> cc1) */
		__sync_fetch_and_add(&n_captured, 1);
		__sync_fetch_and_or(pw, PM_CAPTURED(tgid));
	}
	c->exec_folded++;
	return true;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct pm_counters *c = get_counters();
	struct pm_scratch *s;
	struct pm_exec *e;

	if (!c || !cfg.enabled)
		return 0;
	c->exec_seen++;

	/* The filter comes first so that other processes cost only this much. */
	struct uts_namespace *uts = task->nsproxy->uts_ns;

	if (!prefix_matches(uts)) {
		c->exec_filtered++;
		return 0;
	}

	__u32 tgid = task->tgid;
	__u32 ppid = task->real_parent->tgid;
	__u64 *pw = pid_word(tgid);
	/* the parent's build: one load of n_captured while no build runs */
	__u32 parent = cfg.capture_stderr ? capture_of(ppid) : 0;

	if (parent && pw && fold_child(c, tgid, parent, pw))
		return 0;

	s = bpf_map_lookup_elem(&scratch, &cpu);
	if (!s) {
		c->exec_drop_scratch++;
		return 0;
	}
	e = &s->rec;
	copy_nodename(e->nodename, uts->name.nodename);

	__u64 now = bpf_ktime_get_boot_ns();
	__u32 flags = 0, off = 0;

	e->hdr.type = PM_EV_EXEC;
	e->hdr.version = PM_ABI_VERSION;
	e->hdr.ts_ns = now;
	e->tgid = tgid;
	e->ppid = ppid;
	e->uid = task->real_cred->uid.val;
	e->gid = task->real_cred->gid.val;
	e->cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	e->fork_ns = task->start_boottime;
	ns_pid(task, &e->ns_tgid, &e->pidns_ino);
	e->mntns_ino = task->nsproxy->mnt_ns->ns.inum;
	e->_pad0 = 0;
	e->_pad1 = 0;

	/* argv: the new image's argument area, already copied in by execve() */
	struct mm_struct *mm = task->mm;
	__u64 arg_start = mm->arg_start;
	__u64 arg_end = mm->arg_end;
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
	long n = copy_short_str(s->data + (off & PM_DATA_MASK), bprm->filename);

	if (!n)
		n = bpf_probe_read_kernel_str(s->data + (off & PM_DATA_MASK), PM_PATH_MAX,
					      bprm->filename);

	if (n <= 0) {
		flags |= PM_F_FILENAME_TRUNC;
		n = 0;
	} else if (n == PM_PATH_MAX) {
		flags |= PM_F_FILENAME_TRUNC;
	}
	e->filename_len = n;
	off += n;

	/* exe and cwd, relative to the task's root = the container's "/" */
	struct fs_struct *fs = task->fs;
	struct dentry *root_d = fs->root.dentry;
	struct vfsmount *root_m = fs->root.mnt;
	struct file *exe = mm->exe_file;
	__u32 mark = off, leaf = 0, unused;

	if (exe)
		off = walk_path(cpu, off, exe->f_path.dentry, exe->f_path.mnt, root_d, root_m,
				&flags, PM_F_EXE_TRUNC, PM_F_EXE_UNREACH, &leaf);
	else
		flags |= PM_F_EXE_UNREACH;
	e->exe_len = off - mark;
	int cls = tool_class(s, cpu, mark, leaf);

	if (cls == PM_TOOL_COMPILER || cls == PM_TOOL_INTERPRETER)
		flags |= PM_F_TOOL;
	mark = off;
	off = walk_path(cpu, off, fs->pwd.dentry, fs->pwd.mnt, root_d, root_m, &flags,
			PM_F_CWD_TRUNC, PM_F_CWD_UNREACH, &unused);
	e->cwd_len = off - mark;

	if (!pw) {
		flags |= PM_F_NOT_TRACKED;
		c->exec_not_tracked++;
	} else if (*pw & PM_CAPTURED(tgid)) {
		/* a captured process that exec'd something else is no longer captured (and
		 * one that exec'd a compiler again is decided afresh below) */
		if (__sync_fetch_and_and(pw, ~PM_CAPTURED(tgid)) & PM_CAPTURED(tgid))
			__sync_fetch_and_add(&n_captured, -1);
		uncapture(tgid);
	}
	__u32 build = mark_capture(c, tgid, parent, cls, &flags);

	e->build_tgid = build;
	e->flags = flags;

	off &= PM_DATA_MASK;
	__u32 size = sizeof(struct pm_exec) + off;
	/* the reader must see a compiler or interpreter exec before the process is gone (it
	 * reads their sources); a captured child (cc1, as, ld) needs no prompt read */
	bool urgent = flags & PM_F_TOOL;

	e->hdr.size = size;
	if (bpf_ringbuf_output(&events, s, size, wakeup_flag(c, size, urgent))) {
		c->exec_drop_ringbuf++;
		/* no exec record: nothing captured; an earlier exec's exit stays owed */
		if (build) {
			bpf_map_delete_elem(&capture, &tgid);
			if (build == tgid)
				bpf_map_delete_elem(&builds, &tgid);
		}
		return 0;
	}
	c->exec_emitted++;
	if (pw) {
		if (build) /* counted first: a child cannot exec before this handler returns */
			__sync_fetch_and_add(&n_captured, 1);
		__sync_fetch_and_or(pw, PM_TRACKED(tgid) | (build ? PM_CAPTURED(tgid) : 0));
	} else if (build) {
		bpf_map_delete_elem(&capture, &tgid); /* no bit to find it by */
		if (build == tgid)
			bpf_map_delete_elem(&builds, &tgid);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *task, bool group_dead)
{
	struct pm_counters *c = get_counters();

	/* Only the end of the whole thread group is a process exit. */
	if (!group_dead || !c || !cfg.enabled)
		return 0;
	c->exit_seen++;

	__u32 tgid = task->tgid;
	__u64 *pw = pid_word(tgid);
	__u64 old;

	/* a plain load first: the atomic is only for the few tracked or captured tgids; it
	 * returns the bits set to exactly one caller even if two exits raced */
	if (!pw || !(*pw & (PM_TRACKED(tgid) | PM_CAPTURED(tgid))) ||
	    !((old = __sync_fetch_and_and(pw, ~(PM_TRACKED(tgid) | PM_CAPTURED(tgid)))) &
	      (PM_TRACKED(tgid) | PM_CAPTURED(tgid)))) {
		c->exit_filtered++;
		return 0;
	}
	/* only tracked or folded tgids can be captured: the rest of the node pays nothing */
	if (old & PM_CAPTURED(tgid)) {
		__sync_fetch_and_add(&n_captured, -1);
		if (!(old & PM_TRACKED(tgid))) {
			/* a folded compiler pass (see fold_child): never a driver, no record */
			bpf_map_delete_elem(&capture, &tgid);
			c->exit_folded++;
			return 0;
		}
		uncapture(tgid);
	}

	struct pm_exit *x = bpf_ringbuf_reserve(&events, sizeof(*x), 0);

	if (!x) {
		c->exit_drop_ringbuf++;
		return 0;
	}
	__u32 status = wait_status(task);

	x->hdr.type = PM_EV_EXIT;
	x->hdr.version = PM_ABI_VERSION;
	x->hdr.size = sizeof(*x);
	x->hdr.ts_ns = bpf_ktime_get_boot_ns();
	x->tgid = tgid;
	x->status = status;
	x->last_tid = task->pid;
	x->flags = 0;
	c->exit_emitted++;
	bpf_ringbuf_submit(x, wakeup_flag(c, sizeof(*x), false));
	return 0;
}

/*
 * write(fd, buf, count) by the current task: a pm_stderr record if it is fd 2 of a captured
 * process, within its build's budget. Everyone else pays one bitmap load.
 */
static __always_inline int capture_write(__u64 fd, __u64 buf, __u64 count)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 b = capture_of(tgid);

	if (!b)
		return 0;
	if (fd != 2)
		return 0; /* only fd 2: a compiler's stdout may be its output (-E, -S -o -) */

	__u32 zero = 0;
	struct pm_counters *c = get_counters();
	struct pm_stderr_scratch *s = bpf_map_lookup_elem(&stderr_scratch, &zero);

	if (!c || !s || !cfg.enabled || !cfg.capture_stderr)
		return 0;
	c->stderr_seen++;

	__u64 *used = bpf_map_lookup_elem(&builds, &b);
	__u64 want = count < PM_STDERR_CHUNK ? count : PM_STDERR_CHUNK;

	if (!used || want == 0) {
		c->stderr_drop_budget++;
		return 0;
	}
	/* claim bytes atomically: the driver's children may write at the same time */
	__u64 old = __sync_fetch_and_add(used, want);

	if (old >= cfg.stderr_budget) {
		c->stderr_drop_budget++;
		return 0;
	}
	__u64 left = cfg.stderr_budget - old;
	__u32 n = want < left ? want : left;

	if (n > PM_STDERR_CHUNK)
		n = PM_STDERR_CHUNK; /* already true; tells the verifier */
	if (n == 0 || bpf_probe_read_user(s->data, n, (void *)buf)) {
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
	if (bpf_ringbuf_output(&events, s, size, wakeup_flag(c, size, false))) {
		c->stderr_drop_ringbuf++;
		return 0;
	}
	c->stderr_emitted++;
	return 0;
}

/*
 * The stderr hook userspace prefers: the syscalls:sys_enter_write trace event runs this
 * only for write(2); every other syscall only tests a bit in the kernel (no BPF run).
 * Attached through perf_event_open(), which needs the event's id from tracefs.
 */
SEC("tp/syscalls/sys_enter_write")
int handle_write(struct trace_event_raw_sys_enter *ctx)
{
	return capture_write(ctx->args[0], ctx->args[1], ctx->args[2]);
}

/* The fallback when tracefs cannot be reached (no mount, no CAP_SYS_ADMIN to mount it
 * privately): raw sys_enter runs on every syscall and returns after one compare. */
SEC("tp_btf/sys_enter")
int BPF_PROG(handle_sys_enter, struct pt_regs *regs, long id)
{
	if (id != PM_NR_WRITE)
		return 0;
	return capture_write(PT_REGS_PARM1_CORE_SYSCALL(regs), PT_REGS_PARM2_CORE_SYSCALL(regs),
			     PT_REGS_PARM3_CORE_SYSCALL(regs));
}
