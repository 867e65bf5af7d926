#ifndef PYHOT_SANDBOX_H
#define PYHOT_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * Sandboxed runs (docs/run.md "Sandbox"): the layers a forked child puts between a script
 * and the machine before any of the script's code runs. Pure system calls: no Python, no
 * libuv, no jansson; the child is single-threaded (it was just forked) and its caller ends it
 * with _exit() when a step fails, so nothing ever runs half-sandboxed.
 *
 * The layers, each checked (the order they are applied in is below, at sandbox_unshare):
 *
 *  1. network     a network namespace (network_namespaces(7)) with only a loopback
 *                 device, left down (SANDBOX_NETWORK_NONE) or brought up (LOOPBACK). A root
 *                 daemon's NONE runs enter (setns(2)) one namespace that sandbox_prepare
 *                 made, and check that its loopback is still down; LOOPBACK runs, and every
 *                 run of a daemon that is not root, make their own (unshare(2)), the latter
 *                 after a new user namespace (user_namespaces(7)) mapping its own uid and
 *                 gid, which gives it the capabilities to do so.
 *  2. filesystem  a private mount namespace (mount_namespaces(7)) whose TMPDIR is a tmpfs of
 *                 its own, mounted on sandbox_tmpdir() (every run mounts its own there, in
 *                 its own namespace; the host sees an empty directory) and gone with the
 *                 namespace when the run's last process ends; then Landlock (landlock(7), raw
 *                 syscalls, the best ABI the kernel has): read under the read paths, read
 *                 and write under the write paths, nothing else; from ABI 4 no TCP bind or
 *                 connect (network none), from ABI 6 no signals to and no abstract Unix sockets of
 *                 processes outside the sandbox.
 *  3. privileges  when root: no supplementary groups (setgroups(2)), the sandbox user's gid
 *                 and uid (setresgid(2), setresuid(2)); always: the capability bounding set
 *                 emptied (PR_CAPBSET_DROP), ambient capabilities cleared, every capability
 *                 set to zero (capset(2)) and PR_SET_NO_NEW_PRIVS (prctl(2)).
 *  4. processes   its own process group (the daemon kills the whole group when the run ends,
 *                 sandbox_kill_group), RLIMIT_NPROC (getrlimit(2): counted per real uid) and
 *                 PR_SET_PDEATHSIG so the run dies with the daemon's python thread.
 *  5. seccomp     a libseccomp filter (seccomp(2), seccomp_rule_add(3)) answering EPERM to a
 *                 deny list in the spirit of Docker's default profile, plus setsid/setpgid
 *                 (so no descendant leaves the process group) and socket(AF_UNIX) (so no
 *                 descendant reaches a Unix socket outside: the daemon's own included).
 */

enum sandbox_network {
    SANDBOX_NETWORK_NONE = 0,   /* only a loopback device, down: every connect fails */
    SANDBOX_NETWORK_LOOPBACK,   /* a loopback of its own, up */
};

struct sandbox_spec {
    enum sandbox_network network;
    bool change_user;           /* the daemon is root: drop to uid/gid */
    uid_t uid;
    gid_t gid;
    const char *const *read_paths;   /* read (files and directories beneath); must exist */
    size_t n_read;
    const char *const *found_paths;  /* read, as read_paths, where they exist (the import
                                        paths: one gone since they were listed is skipped) */
    size_t n_found;
    const char *const *write_paths;  /* read and write beneath; must exist */
    size_t n_write;
    const char *tmpdir;         /* sandbox_tmpdir(): the private TMPDIR is mounted on it */
    unsigned tmp_size_mb;       /* size of that tmpfs, MiB (1..) */
    unsigned pids;              /* RLIMIT_NPROC: processes (threads) of the uid, >= 1 */
};

/* Resolves user (a name or a number) for the privileges step: *uid and *gid (its primary
 * group) on success. Returns 0, or -ENOENT / another negative errno with err filled. Not
 * for the forked child: NSS may take locks (getpwnam_r(3)). */
int sandbox_resolve_user(const char *user, uid_t *uid, gid_t *gid, char *err, size_t errlen);

/* Makes what every sandboxed run shares, once (later calls return at once): the seccomp
 * filter of step 5, compiled; the mount point of the private TMPDIRs, an empty 0700
 * directory made under tmp_base (e.g. "/tmp"; mkdtemp(3)); and, when the caller is root,
 * the network namespace of step 1 for SANDBOX_NETWORK_NONE, made on a short-lived thread
 * and held by a descriptor (O_CLOEXEC; a child's sandbox_unshare must run before it closes
 * descriptors it does not know). A namespace that cannot be made is not an error: runs then
 * make their own. Call it before forking, on the thread that forks (it allocates; the child
 * only uses the results). Returns 0, or a negative errno with err filled ("seccomp: ..." or
 * "filesystem: ..."). */
int sandbox_prepare(const char *tmp_base, char *err, size_t errlen);

/* The TMPDIR mount point made by sandbox_prepare, or NULL before it. */
const char *sandbox_tmpdir(void);

/* Removes the mount point (rmdir(2): the host's side of it is always empty), frees the
 * filter and closes the shared network namespace's descriptor. For the daemon's stop, when
 * no run can start any more. Idempotent. */
void sandbox_release(void);

/* Apply the layers of spec to the calling process, in four parts: a child may be forked
 * before its request is known (lib/py_prefork.c), and starts a process of its own, the
 * run's memory holder (lib/py_run.c), before the process limit.
 *
 *  sandbox_unshare          what depends only on the [sandbox] settings (network,
 *                           change_user, uid, gid, tmpdir, tmp_size_mb): step 1, and of
 *                           step 2 the mount namespace with its tmpfs;
 *  sandbox_filter           of step 4 the process group, of step 3 the capability bounding
 *                           set (it bounds only what an execve could gain), then step 5:
 *                           the seccomp filter refuses nothing the later steps need
 *                           (setpgid comes before it), so it is in place before the
 *                           request; its load (the kernel checks and compiles it, 0.15 ms,
 *                           at times 0.6 ms here) is then no part of a run's wait;
 *  sandbox_restrict         Landlock (read_paths, found_paths, write_paths), the rest of
 *                           step 3, then of step 4 PR_SET_PDEATHSIG (a change of uid clears
 *                           it);
 *  sandbox_limit_processes  the rest of step 4, RLIMIT_NPROC (pids): last, because it
 *                           counts every process of the user, zombies that init has not
 *                           reaped yet included (the holders of earlier runs, orphaned
 *                           when their run ended), and would refuse the holder.
 *
 * Each only after the one before succeeded, with no untrusted code run in between. Call
 * them in a forked, single-threaded child, after sandbox_prepare() in the parent; they
 * allocate nothing and leave open no descriptor of their own. Each returns 0, or a
 * negative errno with err filled as "STEP: what failed: why" (STEP one of network,
 * filesystem, privileges, processes, seccomp): the caller must then end the process
 * without running the script. */
int sandbox_unshare(const struct sandbox_spec *spec, char *err, size_t errlen);
int sandbox_filter(char *err, size_t errlen);
int sandbox_restrict(const struct sandbox_spec *spec, char *err, size_t errlen);
int sandbox_limit_processes(const struct sandbox_spec *spec, char *err, size_t errlen);

/* The highest Landlock ABI of the running kernel (landlock_create_ruleset(2) with
 * LANDLOCK_CREATE_RULESET_VERSION): >= 1, or a negative errno (-ENOSYS: not built in,
 * -EOPNOTSUPP: disabled at boot). */
int sandbox_landlock_abi(void);

/* Kills the process group of pid (SIGKILL), the group a sandboxed run made for itself and
 * its descendants. Call it while pid is a zombie not yet reaped (after its exit, before
 * waitpid), so its id cannot have been reused. Returns 0, or -ESRCH when pid leads no group
 * (a run that was not sandboxed). */
int sandbox_kill_group(pid_t pid);

#endif
