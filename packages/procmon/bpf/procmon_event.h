/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * procmon kernel <-> user ABI: the ONLY definition of the records procmon.bpf.c writes to
 * its ring buffer and of the config / counters maps. watcher_procmon/events.py mirrors it;
 * packages/procmon/tests/test_layout.py compiles a C probe against this header and checks
 * every size and offset, so change both sides together (and bump PM_ABI_VERSION).
 *
 * Rules: explicit widths only, every hole filled by a named _pad field, every struct a
 * multiple of 8 bytes, little-endian host order (records never leave the machine raw).
 */
#ifndef PROCMON_EVENT_H
#define PROCMON_EVENT_H

#ifndef __VMLINUX_H__
#include <linux/types.h> /* userspace: __u8 .. __u64; the BPF side gets them from vmlinux.h */
#endif

#define PM_ABI_VERSION 4

/* Sizes of the variable payload of an exec record. */
#define PM_NODENAME_LEN 72 /* UTS nodename: 64 chars + NUL, padded to 8 */
#define PM_PREFIX_MAX 64   /* longest nodename prefix the filter compares */
#define PM_ARGV_MAX 65536  /* argv bytes kept; beyond: PM_F_ARGV_TRUNC + argv_orig_len */
#define PM_PATH_MAX 4096   /* filename budget, and exe / cwd component budget */
#define PM_NAME_MAX 256    /* one path component incl. NUL (NAME_MAX 255 + 1) */
#define PM_MAX_DEPTH 64    /* path components walked for exe / cwd */

/* Compiler stderr capture (pm_stderr records). */
#define PM_TOOL_NAME_LEN 32      /* key of the "tools" map: an exe basename, NUL-padded */
#define PM_STDERR_CHUNK 4096     /* bytes of one write(2) kept in one record */
#define PM_STDERR_BUDGET 16384   /* default bytes captured per build (pm_config overrides) */

/*
 * The exec payload is built in a per-CPU scratch area. Every write offset is masked with
 * PM_DATA_MASK, which is the identity for every offset we can really reach
 * (PM_ARGV_MAX + PM_PATH_MAX + 2 * (PM_PATH_MAX + PM_NAME_MAX) < PM_DATA_MASK) but lets
 * the verifier prove that offset + the largest single read stays inside the area.
 */
#define PM_DATA_MASK 0x1ffff
#define PM_SCRATCH_DATA (PM_DATA_MASK + 1 + PM_PATH_MAX)

enum pm_event_type {
	PM_EV_EXEC = 1,
	PM_EV_EXIT = 2,
	PM_EV_STDERR = 3,
};

/*
 * Values of the "tools" map (exe basename -> class), written by userspace before attach.
 * The kernel looks up the exe's basename as is, then with a version suffix ("-12",
 * "3.11") and a target-triplet prefix ("x86_64-linux-gnu-") cut off. PM_TOOL_NONE entries
 * stop the second lookup ("cc1" must not become "cc").
 */
enum pm_tool_class {
	PM_TOOL_NONE = 0,        /* explicitly not a tool */
	PM_TOOL_COMPILER = 1,    /* its stderr and its children's is captured; wake the reader */
	PM_TOOL_INTERPRETER = 2, /* wake the reader at once (capture-on-exec races its exit) */
};

/* pm_exec.flags */
enum pm_exec_flags {
	PM_F_ARGV_TRUNC = 1 << 0,     /* argv longer than PM_ARGV_MAX: argv_orig_len has it */
	PM_F_ARGV_ERR = 1 << 1,       /* reading argv from user memory failed: argv empty */
	PM_F_FILENAME_TRUNC = 1 << 2, /* bprm->filename unreadable or longer than PM_PATH_MAX */
	PM_F_EXE_TRUNC = 1 << 3,      /* exe path deeper / longer than the walk budget */
	PM_F_EXE_UNREACH = 1 << 4,    /* exe not below the task's fs->root (or no exe file) */
	PM_F_CWD_TRUNC = 1 << 5,      /* cwd deeper / longer than the walk budget */
	PM_F_CWD_UNREACH = 1 << 6,    /* cwd not below the task's fs->root (e.g. after chroot) */
	PM_F_NOT_TRACKED = 1 << 7,    /* tracked-tgid map full: no exit will follow */
	PM_F_CAPTURE = 1 << 8,        /* stderr captured: a compiler or a child of one */
	PM_F_TOOL = 1 << 9,           /* exe basename is a compiler or interpreter ("tools") */
	PM_F_CAPTURE_FULL = 1 << 10,  /* should be captured but the capture map is full */
};

/* Common header; ring buffer records are 8-byte aligned by the kernel. */
struct pm_hdr {
	__u16 type;    /* enum pm_event_type */
	__u16 version; /* PM_ABI_VERSION */
	__u32 size;    /* bytes of the whole record, header included */
	__u64 ts_ns;   /* CLOCK_BOOTTIME ns (bpf_ktime_get_boot_ns) when it happened */
};

/*
 * One successful execve(). Followed by a payload of
 *   argv[argv_len]          the bytes between mm->arg_start and arg_end: NUL-separated args
 *   filename[filename_len]  bprm->filename as passed to execve (may be relative), NUL-ended
 *   exe[exe_len]            mm->exe_file path components, LEAF FIRST, each NUL-ended
 *   cwd[cwd_len]            fs->pwd path components, LEAF FIRST, each NUL-ended
 * Paths are walked up to the task's fs->root, crossing mounts, so they are the paths as
 * seen inside the container; zero components means "/".
 */
struct pm_exec {
	struct pm_hdr hdr;
	__u32 tgid;          /* global (host) pid of the process */
	__u32 ns_tgid;       /* the same pid as seen in the process's own pid namespace */
	__u32 ppid;          /* global tgid of the real parent */
	__u32 uid;           /* real uid (initial user namespace) */
	__u32 gid;           /* real gid */
	__u32 flags;         /* enum pm_exec_flags */
	__u64 cgroup_id;     /* cgroup v2 id (bpf_get_current_cgroup_id) */
	__u64 fork_ns;       /* task->start_boottime: when the process was forked, boot ns */
	__u32 pidns_ino;     /* pid namespace inode number (as in /proc/PID/ns/pid) */
	__u32 mntns_ino;     /* mount namespace inode number */
	__u32 argv_len;      /* payload bytes of argv */
	__u32 argv_orig_len; /* arg_end - arg_start: > argv_len only when truncated */
	__u16 filename_len;  /* payload bytes of filename, NUL included (0: unreadable) */
	__u16 exe_len;       /* payload bytes of exe components */
	__u16 cwd_len;       /* payload bytes of cwd components */
	__u16 _pad0;
	__u32 build_tgid;    /* PM_F_CAPTURE: tgid of the compiler driver this process is part of */
	__u32 _pad1;
	char nodename[PM_NODENAME_LEN]; /* UTS nodename, NUL-terminated */
	/* payload follows */
};

/* The end of a process (the last thread of the thread group): exactly one per exec'd tgid. */
struct pm_exit {
	struct pm_hdr hdr;
	__u32 tgid;     /* global pid */
	__u32 status;   /* wait status as waitpid(2) reports it: code<<8 | 0x80 core | signal */
	__u32 last_tid; /* global tid of the thread whose exit ended the group */
	__u32 flags;    /* reserved, 0 */
};

/*
 * Bytes a captured process (PM_F_CAPTURE) wrote to fd 2 with write(2): the first
 * config.stderr_budget bytes per build (driver + children), at most PM_STDERR_CHUNK per
 * write. Followed by data[len]. Students' own programs are never captured.
 */
struct pm_stderr {
	struct pm_hdr hdr;
	__u32 tgid;       /* global pid of the writer */
	__u32 build_tgid; /* the build it belongs to (its compiler driver's tgid) */
	__u32 len;        /* payload bytes */
	__u32 orig_len;   /* the count passed to write(): > len when cut by chunk or budget */
};

/*
 * Filter and wakeup settings: the programs' `const volatile` global in section
 * ".rodata.cfg", written by userspace before load (bpf_map__set_initial_value) and frozen,
 * so the verifier treats every field as a constant (the loads stay, though). The scalars
 * come first so that they and a prefix of up to 32 bytes share the map's first cache line.
 */
struct pm_config {
	__u32 prefix_len;     /* 0: trace every process */
	__u32 enabled;        /* 0: programs return at once (before config is written) */
	__u32 wakeup_every;   /* wake the reader every N records per CPU (<= 1: always) */
	__u32 wakeup_bytes;   /* records at least this large wake the reader at once */
	__u32 capture_stderr; /* 0: compilers' stderr is not captured */
	__u32 stderr_budget;  /* bytes captured per build */
	/*
	 * Bit pm_tool_bloom_bit(name) is set for every name in the "tools" map: an exe whose
	 * basename's bit is clear skips the first (hash) lookup. 0: look every name up.
	 */
	__u64 tool_bloom;
	char prefix[PM_PREFIX_MAX]; /* UTS nodename prefix of student containers */
};

/* The bloom bit of a basename: its first and last byte and its length (without NUL). */
#define PM_TOOL_BLOOM_BIT(first, last, len) ((((first) * 7u) + ((last) * 3u) + (len)) & 63u)

/*
 * In-kernel counters (per-CPU array, one entry; userspace sums the CPUs). At rest:
 *   exec_seen == exec_emitted + exec_filtered + exec_folded + exec_drop_ringbuf
 *                + exec_drop_scratch
 *   exit_seen == exit_emitted + exit_filtered + exit_folded + exit_drop_ringbuf
 *   stderr_seen == stderr_emitted + stderr_drop_budget + stderr_drop_ringbuf + stderr_read_err
 * exec_read_err and exec_not_tracked count emitted records that carry an error flag.
 */
struct pm_counters {
	/* the eight every exec and exit touches first: one cache line (if the per-CPU
	 * value starts on one; it is only 8-aligned) */
	__u64 exec_seen;         /* execs while enabled */
	__u64 exec_emitted;      /* exec records in the ring buffer */
	__u64 exec_filtered;     /* not a student container: nothing emitted */
	__u64 exit_seen;         /* thread-group exits (group_dead) while enabled */
	__u64 exit_emitted;      /* exit records in the ring buffer */
	__u64 exit_filtered;     /* tgid was never exec'd in a student container */
	__u64 stderr_emitted;    /* pm_stderr records in the ring buffer */
	__u64 wakeups;           /* records submitted with a forced wakeup */
	__u64 exec_drop_ringbuf; /* ring buffer full */
	__u64 exec_drop_scratch; /* no scratch area for this CPU (map sized too small) */
	__u64 exit_drop_ringbuf; /* ring buffer full */
	__u64 exec_read_err;     /* emitted with PM_F_ARGV_ERR */
	__u64 exec_not_tracked;  /* emitted with PM_F_NOT_TRACKED */
	__u64 stderr_seen;         /* write(2, ...) calls by captured processes */
	__u64 stderr_drop_budget;  /* the build's budget was used up (or the build ended) */
	__u64 stderr_drop_ringbuf; /* ring buffer full */
	__u64 stderr_read_err;     /* reading the user buffer failed */
	__u64 capture_full;        /* exec'd with PM_F_CAPTURE_FULL */
	/*
	 * A compiler's pass (cc1, as, collect2, ld ...: a child of a captured process, in a pid
	 * that owes no exit) emits neither exec nor exit record: userspace sends no run for
	 * it, and its stderr records name its build. Two thirds of a build's processes.
	 */
	__u64 exec_folded; /* such an exec: captured, nothing emitted */
	__u64 exit_folded; /* the exit of such a process: nothing emitted */
};

_Static_assert(sizeof(struct pm_hdr) == 16, "pm_hdr size");
_Static_assert(sizeof(struct pm_exec) == 160, "pm_exec size");
_Static_assert(__builtin_offsetof(struct pm_exec, tgid) == 16, "pm_exec.tgid");
_Static_assert(__builtin_offsetof(struct pm_exec, cgroup_id) == 40, "pm_exec.cgroup_id");
_Static_assert(__builtin_offsetof(struct pm_exec, pidns_ino) == 56, "pm_exec.pidns_ino");
_Static_assert(__builtin_offsetof(struct pm_exec, filename_len) == 72, "pm_exec.filename_len");
_Static_assert(__builtin_offsetof(struct pm_exec, build_tgid) == 80, "pm_exec.build_tgid");
_Static_assert(__builtin_offsetof(struct pm_exec, nodename) == 88, "pm_exec.nodename");
_Static_assert(sizeof(struct pm_exit) == 32, "pm_exit size");
_Static_assert(sizeof(struct pm_stderr) == 32, "pm_stderr size");
_Static_assert(sizeof(struct pm_config) == 96, "pm_config size");
_Static_assert(sizeof(struct pm_counters) == 20 * 8, "pm_counters size");
_Static_assert(sizeof(struct pm_exec) % 8 == 0, "records stay 8-byte aligned");
_Static_assert(PM_ARGV_MAX + PM_PATH_MAX + 2 * (PM_PATH_MAX + PM_NAME_MAX) < PM_DATA_MASK,
	       "PM_DATA_MASK must be the identity on every reachable payload offset");

#endif /* PROCMON_EVENT_H */
