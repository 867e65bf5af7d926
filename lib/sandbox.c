#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- Landlock: what Debian 12's linux/landlock.h (ABI 2) does not define yet ---------- */

#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)   /* ABI 3 */
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)  /* ABI 5 */
#endif
#define SANDBOX_LANDLOCK_NET_BIND_TCP (1ULL << 0)    /* ABI 4 */
#define SANDBOX_LANDLOCK_NET_CONNECT_TCP (1ULL << 1) /* ABI 4 */
#define SANDBOX_LANDLOCK_SCOPE_ABSTRACT_UNIX (1ULL << 0) /* ABI 6 */
#define SANDBOX_LANDLOCK_SCOPE_SIGNAL (1ULL << 1)        /* ABI 6 */

/* struct landlock_ruleset_attr as of ABI 6; the kernel takes the size we pass and requires
 * the fields it does not know to be zero (copy_struct_from_user). */
struct ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

#define FS_READ (LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR)
#define FS_WRITE                                                                              \
    (FS_READ | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR |                 \
     LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG | \
     LANDLOCK_ACCESS_FS_MAKE_SYM | LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_SOCK |  \
     LANDLOCK_ACCESS_FS_REFER | LANDLOCK_ACCESS_FS_TRUNCATE)
/* The rights that apply to a file (not a directory); landlock_add_rule(2) refuses others. */
#define FS_FILE_RIGHTS                                                                        \
    (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_READ_FILE | \
     LANDLOCK_ACCESS_FS_TRUNCATE | LANDLOCK_ACCESS_FS_IOCTL_DEV)

/* The filesystem rights each ABI handles (landlock(7), "Filesystem actions"). */
static uint64_t fs_rights_of_abi(int abi) {
    uint64_t rights = (1ULL << 13) - 1; /* ABI 1: EXECUTE .. MAKE_SYM */
    if (abi >= 2)
        rights |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3)
        rights |= LANDLOCK_ACCESS_FS_TRUNCATE;
    if (abi >= 5)
        rights |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
    return rights;
}

int sandbox_landlock_abi(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return abi < 0 ? -errno : (int)abi;
}

/* ---- errors ------------------------------------------------------------------------- */

/* Fills err with "step: what: strerror(-r)" and returns r (negative errno). */
static int step_fail(char *err, size_t errlen, const char *step, int r, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int step_fail(char *err, size_t errlen, const char *step, int r, const char *fmt, ...) {
    char what[PATH_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(err, errlen, "%s: %s: %s", step, what, strerror(-r));
    return r;
}

/* ---- outside the child --------------------------------------------------------------- */

int sandbox_resolve_user(const char *user, uid_t *uid, gid_t *gid, char *err, size_t errlen) {
    char buf[4096];
    struct passwd pw, *found = NULL;
    int r = getpwnam_r(user, &pw, buf, sizeof(buf), &found);
    if (!found) {
        char *end;
        errno = 0;
        unsigned long n = strtoul(user, &end, 10);
        if (user[0] != '\0' && *end == '\0' && errno == 0 && n < UINT32_MAX) {
            r = getpwuid_r((uid_t)n, &pw, buf, sizeof(buf), &found);
            if (!found) {
                /* A bare number is a uid even without a passwd entry; its group is its own. */
                *uid = (uid_t)n;
                *gid = (gid_t)n;
                return 0;
            }
        }
    }
    if (!found) {
        snprintf(err, errlen, "sandbox user \"%s\": %s", user,
                 r ? strerror(r) : "no such user (see [sandbox] user)");
        return r ? -r : -ENOENT;
    }
    if (found->pw_uid == 0) {
        snprintf(err, errlen, "sandbox user \"%s\" is root: a sandbox must not run as root", user);
        return -EPERM;
    }
    *uid = found->pw_uid;
    *gid = found->pw_gid;
    return 0;
}

int sandbox_kill_group(pid_t pid) {
    return kill(-pid, SIGKILL) < 0 ? -errno : 0;
}

/* ---- 1. network ---------------------------------------------------------------------- */

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t len = (ssize_t)strlen(text);
    int r = write(fd, text, (size_t)len) == len ? 0 : -errno;
    close(fd);
    return r;
}

/* A user namespace of our own where we have the capabilities the next steps need, our uid
 * and gid mapped to themselves (user_namespaces(7), "Defining user and group ID mappings";
 * setgroups must be denied before an unprivileged process may write gid_map). */
static int enter_user_namespace(char *err, size_t errlen) {
    uid_t uid = geteuid();
    gid_t gid = getegid();
    char map[64];
    if (unshare(CLONE_NEWUSER) < 0)
        return step_fail(err, errlen, "network", -errno,
                         "unshare(CLONE_NEWUSER) (the daemon is not root, so the sandbox needs a "
                         "user namespace; see /proc/sys/user/max_user_namespaces)");
    snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)uid, (unsigned)uid);
    int r = write_file("/proc/self/uid_map", map);
    if (r == 0)
        r = write_file("/proc/self/setgroups", "deny");
    if (r == 0) {
        snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)gid, (unsigned)gid);
        r = write_file("/proc/self/gid_map", map);
    }
    if (r < 0)
        return step_fail(err, errlen, "network", r, "mapping the user namespace's ids");
    return 0;
}

/* The loopback's interface flags (SIOCGIFFLAGS, netdevice(7)), after setting those of
 * raise when it is not 0 (SIOCSIFFLAGS): >= 0, or a negative errno. */
static int loopback_flags(short raise) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    int r = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (r == 0 && raise) {
        ifr.ifr_flags |= raise;
        r = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    r = r < 0 ? -errno : (unsigned short)ifr.ifr_flags;
    close(fd);
    return r;
}

static int loopback_up(char *err, size_t errlen) {
    int r = loopback_flags(IFF_UP | IFF_RUNNING);
    return r < 0 ? step_fail(err, errlen, "network", r, "bringing the loopback up") : 0;
}

/* The loopback's IFF_UP flag: 1 up, 0 down, or a negative errno. */
static int loopback_is_up(void) {
    int flags = loopback_flags(0);
    return flags < 0 ? flags : (flags & IFF_UP) != 0;
}

/* The network namespace that every network = none run of a root daemon enters (setns(2)),
 * made once by sandbox_prepare; -1 when there is none (not root, or it could not be made:
 * each run then makes its own). Making a namespace and the kernel's tear-down of it after
 * the run (cleanup_net) cost about a millisecond of CPU per run (docs/benchmarks.md); one
 * that holds only a loopback that is down carries nothing from one run to another. */
static int shared_netns = -1;
static bool shared_netns_tried;

/* A thread of its own, because unshare(CLONE_NEWNET) moves only the calling thread
 * (unshare(2)); the descriptor it opens outlives it and keeps the namespace. */
static void *make_shared_netns(void *result) {
    int *fd = result;
    if (unshare(CLONE_NEWNET) == 0 && loopback_is_up() == 0)
        *fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    return NULL;
}

static void shared_netns_prepare(void) {
    pthread_t thread;
    if (shared_netns_tried || geteuid() != 0)
        return;
    shared_netns_tried = true;
    if (pthread_create(&thread, NULL, make_shared_netns, &shared_netns) == 0)
        pthread_join(thread, NULL);
}

static int step_network(const struct sandbox_spec *spec, char *err, size_t errlen) {
    if (spec->network == SANDBOX_NETWORK_NONE && shared_netns >= 0) {
        if (setns(shared_netns, CLONE_NEWNET) < 0)
            return step_fail(err, errlen, "network", -errno, "setns to the sandbox's namespace");
        /* Only root on the host could have brought it up; the run would then have a
         * loopback it shares with every other: refuse. */
        int up = loopback_is_up();
        if (up != 0)
            return step_fail(err, errlen, "network", up < 0 ? up : -EEXIST,
                             "the shared namespace's loopback is not down");
        return 0;
    }
    if (geteuid() != 0) {
        int r = enter_user_namespace(err, errlen);
        if (r < 0)
            return r;
    }
    if (unshare(CLONE_NEWNET) < 0)
        return step_fail(err, errlen, "network", -errno, "unshare(CLONE_NEWNET)");
    return spec->network == SANDBOX_NETWORK_LOOPBACK ? loopback_up(err, errlen) : 0;
}

/* ---- 2. filesystem --------------------------------------------------------------------- */

/* A private mount namespace, nothing propagating back to the host's (MS_PRIVATE on every
 * mount, mount_namespaces(7)), and a tmpfs on spec->tmpdir: the run's TMPDIR, limited in
 * size, owned by the run's user, gone with the namespace when the run's last process ends. */
static int mount_private_tmp(const struct sandbox_spec *spec, char *err, size_t errlen) {
    if (unshare(CLONE_NEWNS) < 0)
        return step_fail(err, errlen, "filesystem", -errno, "unshare(CLONE_NEWNS)");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return step_fail(err, errlen, "filesystem", -errno, "making the mounts private");
    char options[128];
    snprintf(options, sizeof(options), "size=%um,nr_inodes=%u,mode=0700,uid=%u,gid=%u",
             spec->tmp_size_mb, spec->tmp_size_mb * 256, (unsigned)(spec->change_user ? spec->uid : geteuid()),
             (unsigned)(spec->change_user ? spec->gid : getegid()));
    if (mount("tmpfs", spec->tmpdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options) < 0)
        return step_fail(err, errlen, "filesystem", -errno, "mounting the private TMPDIR on %s",
                         spec->tmpdir);
    return 0;
}

/* A Landlock rule for path; a path that does not exist is an error, or skipped when
 * optional. */
static int add_path_rule(int ruleset, const char *path, uint64_t rights, uint64_t handled,
                         bool optional, char *err, size_t errlen) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0 && optional && errno == ENOENT)
        return 0;
    if (fd < 0)
        return step_fail(err, errlen, "filesystem", -errno, "%s", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return step_fail(err, errlen, "filesystem", r, "%s", path);
    }
    struct landlock_path_beneath_attr rule = {
        .allowed_access = rights & handled & (S_ISDIR(st.st_mode) ? ~0ULL : FS_FILE_RIGHTS),
        .parent_fd = fd,
    };
    int r = syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) < 0 ? -errno : 0;
    close(fd);
    return r < 0 ? step_fail(err, errlen, "filesystem", r, "landlock_add_rule(%s)", path) : 0;
}

static int landlock_apply(const struct sandbox_spec *spec, char *err, size_t errlen) {
    int abi = sandbox_landlock_abi();
    if (abi < 0)
        return step_fail(err, errlen, "filesystem", abi,
                         abi == -EOPNOTSUPP ? "Landlock is disabled in this kernel (add landlock to "
                                              "the lsm= boot parameter)"
                                            : "this kernel has no Landlock (it needs Linux 5.13 or "
                                              "later built with CONFIG_SECURITY_LANDLOCK)");
    struct ruleset_attr attr = {.handled_access_fs = fs_rights_of_abi(abi)};
    /* With no usable network, no TCP either, a second wall behind the namespace; with a
     * loopback of its own the run may use TCP on it (Landlock's rules name ports, not
     * addresses, so the namespace alone keeps it in). */
    if (abi >= 4 && spec->network == SANDBOX_NETWORK_NONE)
        attr.handled_access_net = SANDBOX_LANDLOCK_NET_BIND_TCP | SANDBOX_LANDLOCK_NET_CONNECT_TCP;
    if (abi >= 6)
        attr.scoped = SANDBOX_LANDLOCK_SCOPE_ABSTRACT_UNIX | SANDBOX_LANDLOCK_SCOPE_SIGNAL;
    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
    if (ruleset < 0)
        return step_fail(err, errlen, "filesystem", -errno, "landlock_create_ruleset (ABI %d)", abi);
    int r = 0;
    uint64_t handled = attr.handled_access_fs;
    for (size_t i = 0; r == 0 && i < spec->n_read; i++)
        r = add_path_rule(ruleset, spec->read_paths[i], FS_READ, handled, false, err, errlen);
    for (size_t i = 0; r == 0 && i < spec->n_found; i++)
        r = add_path_rule(ruleset, spec->found_paths[i], FS_READ, handled, true, err, errlen);
    for (size_t i = 0; r == 0 && i < spec->n_write; i++)
        r = add_path_rule(ruleset, spec->write_paths[i], FS_WRITE, handled, false, err, errlen);
    if (r == 0)
        r = add_path_rule(ruleset, spec->tmpdir, FS_WRITE, handled, false, err, errlen);
    if (r == 0)
        r = add_path_rule(ruleset, "/dev/null", FS_WRITE, handled, false, err, errlen);
    if (r == 0) {
        /* landlock_restrict_self(2) needs no_new_privs or CAP_SYS_ADMIN; we are going to set
         * no_new_privs anyway (step 3), so set it now rather than depend on the capability. */
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
            syscall(SYS_landlock_restrict_self, ruleset, 0) < 0)
            r = step_fail(err, errlen, "filesystem", -errno, "landlock_restrict_self (ABI %d)", abi);
    }
    close(ruleset);
    return r;
}

/* ---- 3. privileges --------------------------------------------------------------------- */

/* The bounding set, emptied before the rest of the step (and, by a ready child, before its
 * request: it limits only what an execve could gain, capabilities(7), so the steps after it
 * keep what they need): dropping from it needs CAP_SETPCAP, gone with the uid change.
 * PR_CAPBSET_DROP fails with EINVAL past the kernel's last capability (prctl(2)), which
 * ends the loop (one call a capability: reading each first doubled them). */
static int step_bounding_set(char *err, size_t errlen) {
    int cap = 0;
    while (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0)
        cap++;
    if (errno != EINVAL || cap == 0 || prctl(PR_CAPBSET_READ, cap - 1, 0, 0, 0) != 0)
        return step_fail(err, errlen, "privileges", errno == EINVAL ? -EPERM : -errno,
                         "PR_CAPBSET_DROP(%d)", cap);
    return 0;
}

static int step_privileges(const struct sandbox_spec *spec, char *err, size_t errlen) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return step_fail(err, errlen, "privileges", -errno, "PR_CAP_AMBIENT_CLEAR_ALL");
    if (spec->change_user) {
        if (setgroups(0, NULL) < 0)
            return step_fail(err, errlen, "privileges", -errno, "setgroups(0)");
        if (setresgid(spec->gid, spec->gid, spec->gid) < 0)
            return step_fail(err, errlen, "privileges", -errno, "setresgid(%u)", (unsigned)spec->gid);
        if (setresuid(spec->uid, spec->uid, spec->uid) < 0)
            return step_fail(err, errlen, "privileges", -errno, "setresuid(%u)", (unsigned)spec->uid);
        uid_t ruid, euid, suid;
        if (getresuid(&ruid, &euid, &suid) < 0 || ruid != spec->uid || euid != spec->uid ||
            suid != spec->uid)
            return step_fail(err, errlen, "privileges", -EPERM, "the uid did not change");
    }
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
    memset(caps, 0, sizeof(caps));
    if (syscall(SYS_capset, &header, caps) < 0)
        return step_fail(err, errlen, "privileges", -errno, "capset(0)");
    if (syscall(SYS_capget, &header, caps) < 0)
        return step_fail(err, errlen, "privileges", -errno, "capget");
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
        if (caps[i].effective || caps[i].permitted || caps[i].inheritable)
            return step_fail(err, errlen, "privileges", -EPERM, "capabilities are left");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        return step_fail(err, errlen, "privileges", -errno, "PR_SET_NO_NEW_PRIVS");
    return 0;
}

/* ---- 4. processes ---------------------------------------------------------------------- */

/* Before the filter, which refuses setpgid (so that no descendant leaves the group). */
static int step_process_group(char *err, size_t errlen) {
    if (setpgid(0, 0) < 0)
        return step_fail(err, errlen, "processes", -errno, "setpgid");
    return 0;
}

/* After the privileges: a change of the effective uid or gid clears the parent-death
 * signal (commit_creds, kernel/cred.c). */
static int step_parent_death(char *err, size_t errlen) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        return step_fail(err, errlen, "processes", -errno, "PR_SET_PDEATHSIG");
    return 0;
}

/* ---- 5. seccomp ------------------------------------------------------------------------ */

/* Answer EPERM. The kernel interfaces a sandbox escape or a change to the host needs, after
 * Docker's default profile (moby profiles/seccomp/default.json): tracing and other
 * processes' memory, mounts and namespaces, keyrings, BPF and perf, modules and kexec, the
 * clocks, swap, reboot, accounting and quotas, io_uring (its operations bypass this filter),
 * file handles, userfaultfd; and setsid/setpgid, so no descendant leaves the run's process
 * group (step 4). Names this architecture lacks are skipped. */
static const char *const denied_syscalls[] = {
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "unshare", "setns",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "fanotify_init",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "query_module", "get_kernel_syms",
    "clock_settime", "clock_adjtime", "settimeofday", "adjtimex", "stime",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd", "nfsservctl",
    "lookup_dcookie", "syslog", "vhangup", "iopl", "ioperm", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at", "personality",
    "setsid", "setpgid",
};

/* clone(2) flags that make namespaces (CLONE_NEWTIME is clone3-only: clone3 is refused). */
static const unsigned long namespace_flags[] = {
    CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
    CLONE_NEWCGROUP,
};

/* The filter, compiled once by sandbox_prepare() (libseccomp's seccomp_export_bpf(3)) so
 * that a child only hands it to the kernel: building it costs more than the rest of the
 * sandbox together. Written on the forking thread only, read by the forked children. */
static struct sock_fprog filter_program;

static int build_filter(scmp_filter_ctx ctx, char *err, size_t errlen) {
    int r = 0;
    for (size_t i = 0; r == 0 && i < sizeof(denied_syscalls) / sizeof(denied_syscalls[0]); i++) {
        int nr = seccomp_syscall_resolve_name(denied_syscalls[i]);
        if (nr == __NR_SCMP_ERROR || nr < 0)
            continue;
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
        if (r < 0)
            step_fail(err, errlen, "seccomp", r, "rule for %s", denied_syscalls[i]);
    }
    for (size_t i = 0; r == 0 && i < sizeof(namespace_flags) / sizeof(namespace_flags[0]); i++) {
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                             SCMP_A0(SCMP_CMP_MASKED_EQ, namespace_flags[i], namespace_flags[i]));
        if (r < 0)
            step_fail(err, errlen, "seccomp", r, "rule for clone");
    }
    /* clone3 passes its flags in memory a filter cannot read: ENOSYS makes glibc fall back to
     * clone, whose flags it can. */
    if (r == 0 && (r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0)) < 0)
        step_fail(err, errlen, "seccomp", r, "rule for clone3");
    /* No Unix socket of the host (the daemon's control socket among them); socketpair stays. */
    if (r == 0 && (r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socket), 1,
                                        SCMP_A0(SCMP_CMP_EQ, AF_UNIX, 0))) < 0)
        step_fail(err, errlen, "seccomp", r, "rule for socket(AF_UNIX)");
    /* Typing into a terminal that is not ours (TIOCSTI) or its console (TIOCLINUX). */
    if (r == 0 && (r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                                        SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, TIOCSTI))) < 0)
        step_fail(err, errlen, "seccomp", r, "rule for ioctl(TIOCSTI)");
    if (r == 0 && (r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                                        SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, TIOCLINUX))) < 0)
        step_fail(err, errlen, "seccomp", r, "rule for ioctl(TIOCLINUX)");
    return r;
}

static char tmpdir_path[PATH_MAX];

const char *sandbox_tmpdir(void) {
    return tmpdir_path[0] ? tmpdir_path : NULL;
}

void sandbox_release(void) {
    if (tmpdir_path[0])
        rmdir(tmpdir_path);
    tmpdir_path[0] = '\0';
    if (shared_netns >= 0)
        close(shared_netns);
    shared_netns = -1;
    shared_netns_tried = false;
    free(filter_program.filter);
    filter_program.filter = NULL;
    filter_program.len = 0;
}

static int make_tmpdir(const char *tmp_base, char *err, size_t errlen) {
    char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/pyhotd-sandbox-XXXXXX", tmp_base);
    if (n < 0 || (size_t)n >= sizeof(path))
        return step_fail(err, errlen, "filesystem", -ENAMETOOLONG, "the TMPDIR base %s", tmp_base);
    if (!mkdtemp(path))
        return step_fail(err, errlen, "filesystem", -errno, "creating the TMPDIR mount point in %s",
                         tmp_base);
    memcpy(tmpdir_path, path, (size_t)n + 1);
    return 0;
}

int sandbox_prepare(const char *tmp_base, char *err, size_t errlen) {
    if (!tmpdir_path[0]) {
        int r = make_tmpdir(tmp_base, err, errlen);
        if (r < 0)
            return r;
    }
    shared_netns_prepare();
    if (filter_program.filter)
        return 0;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx)
        return step_fail(err, errlen, "seccomp", -ENOMEM, "seccomp_init");
    /* A binary tree of the system call numbers rather than a list (seccomp_attr_set(3),
     * SCMP_FLTATR_CTL_OPTIMIZE): the kernel runs the filter once per call number when it
     * loads it (seccomp_cache_prepare, kernel/seccomp.c), so a run's load takes 70-90 µs
     * instead of 190-200 here (docs/benchmarks.md). */
    int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    if (r < 0)
        step_fail(err, errlen, "seccomp", r, "SCMP_FLTATR_CTL_OPTIMIZE");
    if (r == 0)
        r = build_filter(ctx, err, errlen);
    int fd = r == 0 ? memfd_create("pyhot-seccomp", MFD_CLOEXEC) : -1;
    if (r == 0 && fd < 0)
        r = step_fail(err, errlen, "seccomp", -errno, "memfd_create");
    if (r == 0 && (r = seccomp_export_bpf(ctx, fd)) < 0)
        step_fail(err, errlen, "seccomp", r, "seccomp_export_bpf");
    seccomp_release(ctx);
    off_t size = r == 0 ? lseek(fd, 0, SEEK_END) : -1;
    if (r == 0 && (size <= 0 || size % (off_t)sizeof(struct sock_filter) != 0 ||
                   size / (off_t)sizeof(struct sock_filter) > BPF_MAXINSNS))
        r = step_fail(err, errlen, "seccomp", -EINVAL, "the exported filter has %lld bytes", (long long)size);
    struct sock_filter *program = r == 0 ? malloc((size_t)size) : NULL;
    if (r == 0 && !program)
        r = step_fail(err, errlen, "seccomp", -ENOMEM, "the filter");
    if (r == 0 && pread(fd, program, (size_t)size, 0) != size)
        r = step_fail(err, errlen, "seccomp", errno ? -errno : -EIO, "reading the exported filter");
    if (fd >= 0)
        close(fd);
    if (r < 0) {
        free(program);
        return r;
    }
    filter_program.len = (unsigned short)(size / (off_t)sizeof(struct sock_filter));
    filter_program.filter = program;
    return 0;
}

static int step_seccomp(char *err, size_t errlen) {
    if (!filter_program.filter)
        return step_fail(err, errlen, "seccomp", -EINVAL, "no filter (sandbox_prepare was not called)");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &filter_program) < 0)
        return step_fail(err, errlen, "seccomp", -errno, "seccomp(SECCOMP_SET_MODE_FILTER)");
    return 0;
}

/* ---- all of it ------------------------------------------------------------------------- */

int sandbox_unshare(const struct sandbox_spec *spec, char *err, size_t errlen) {
    int r = step_network(spec, err, errlen);
    return r < 0 ? r : mount_private_tmp(spec, err, errlen);
}

int sandbox_filter(char *err, size_t errlen) {
    int r = step_process_group(err, errlen);
    if (r == 0)
        r = step_bounding_set(err, errlen);
    return r < 0 ? r : step_seccomp(err, errlen);
}

int sandbox_restrict(const struct sandbox_spec *spec, char *err, size_t errlen) {
    int r = landlock_apply(spec, err, errlen);
    if (r == 0)
        r = step_privileges(spec, err, errlen);
    if (r == 0)
        r = step_parent_death(err, errlen);
    return r;
}

int sandbox_limit_processes(const struct sandbox_spec *spec, char *err, size_t errlen) {
    struct rlimit limit = {spec->pids, spec->pids};
    if (setrlimit(RLIMIT_NPROC, &limit) < 0)
        return step_fail(err, errlen, "processes", -errno, "setrlimit(RLIMIT_NPROC, %u)", spec->pids);
    return 0;
}

